//! One suite, run on both backends: every case is written once against
//! [`Storage`] and instantiated for redb (a temporary file) and PostgreSQL
//! (a database of its own on the test server, see `baton-test-postgres`).

use super::namespace::MAX_KEY_BYTES;
use super::*;
use crate::config::{StorageBackend, StorageConfig};

const LIMITS: StorageLimits = StorageLimits {
    max_value_bytes: 100,
    max_bytes: 10_000,
};

/// A storage of one backend and what keeps it alive.
struct Fixture {
    storage: Storage,
    _dir: tempfile::TempDir,
    _db: Option<baton_test_postgres::Database>,
    config: StorageConfig,
}

impl Fixture {
    async fn new(backend: StorageBackend) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = matches!(backend, StorageBackend::Postgres).then(baton_test_postgres::database);
        let config = StorageConfig {
            backend,
            postgres_url: db.as_ref().map(|db| db.url.clone()),
            ..StorageConfig::default()
        };
        let storage = Storage::open(&config, dir.path()).await.expect("open");
        Fixture {
            storage,
            _dir: dir,
            _db: db,
            config,
        }
    }

    /// The same storage, opened again (as a restarted host, or a second one).
    async fn again(&self) -> Storage {
        if matches!(self.config.backend, StorageBackend::Redb) {
            self.storage.close();
        }
        Storage::open(&self.config, self._dir.path()).await.expect("reopen")
    }
}

async fn owned(s: &Storage, tenant: &str, plugin: &str) -> (Namespace, u64) {
    let ns = Namespace::new(tenant, plugin);
    let token = s.claim(&ns, 0).await.expect("claim");
    (ns, token)
}

async fn namespaces_do_not_see_each_other(f: Fixture) {
    let s = &f.storage;
    let (a, ta) = owned(s, "acme", "chat").await;
    let (b, tb) = owned(s, "globex", "chat").await;
    let c = Namespace::new("acme", "metering");
    s.set(&a, ta, "k".into(), b"a".to_vec(), LIMITS).await.expect("set");
    s.set(&b, tb, "k".into(), b"b".to_vec(), LIMITS).await.expect("set");
    assert_eq!(s.get(&a, "k".into()).await.expect("get"), Some(b"a".to_vec()));
    assert_eq!(s.get(&b, "k".into()).await.expect("get"), Some(b"b".to_vec()));
    assert_eq!(s.get(&c, "k".into()).await.expect("get"), None);
    assert_eq!(s.list(&a, String::new(), 10).await.expect("list"), vec!["k".to_owned()]);
    // A key that looks like a path into another namespace is just a key.
    assert_eq!(s.get(&a, "\0globex\0chat\0k".into()).await.expect("get"), None);
    // A token of one namespace is no token of another.
    assert_eq!(
        s.set(&c, ta, "k".into(), b"c".to_vec(), LIMITS).await,
        Err(StorageError::Fenced)
    );
}

async fn lists_by_prefix_in_order(f: Fixture) {
    let s = &f.storage;
    let (ns, t) = owned(s, "t", "p").await;
    for key in ["rooms/b", "rooms/a", "users/x", "rooms/c", "rooms/B", "rooms_"] {
        s.set(&ns, t, key.into(), b"1".to_vec(), LIMITS).await.expect("set");
    }
    assert_eq!(
        s.list(&ns, "rooms/".into(), 2).await.expect("list"),
        vec!["rooms/B", "rooms/a"]
    );
    assert!(s.delete(&ns, t, "rooms/a".into()).await.expect("delete"));
    assert!(!s.delete(&ns, t, "rooms/a".into()).await.expect("delete"));
    assert_eq!(
        s.list(&ns, "rooms/".into(), 10).await.expect("list"),
        vec!["rooms/B", "rooms/b", "rooms/c"]
    );
    // `%` and `_` are plain characters in a prefix.
    assert_eq!(s.list(&ns, "rooms_".into(), 10).await.expect("list"), vec!["rooms_"]);
    assert_eq!(s.list(&ns, "%".into(), 10).await.expect("list"), Vec::<String>::new());
}

async fn sizes_and_quotas_are_enforced(f: Fixture) {
    let s = &f.storage;
    let (ns, t) = owned(s, "t", "p").await;
    let small = StorageLimits {
        max_value_bytes: 100,
        max_bytes: 20,
    };
    let set = |key: &str, len: usize| s.set(&ns, t, key.into(), vec![0; len], small);
    assert_eq!(set("", 1).await, Err(StorageError::InvalidKey));
    assert_eq!(
        set(&"k".repeat(MAX_KEY_BYTES + 1), 1).await,
        Err(StorageError::InvalidKey)
    );
    assert_eq!(set("k", 101).await, Err(StorageError::TooLarge));
    set("k", 15).await.expect("16 bytes fit");
    assert_eq!(set("j", 5).await, Err(StorageError::QuotaExceeded));
    set("k", 3).await.expect("shrinking is fine");
    assert_eq!(s.used(&ns).await.expect("used"), 4);
    set("j", 5).await.expect("now it fits");
    s.delete(&ns, t, "k".into()).await.expect("delete");
    assert_eq!(s.used(&ns).await.expect("used"), 6);
}

async fn kept_states_stay_until_replaced(f: Fixture) {
    let s = &f.storage;
    let (ns, t) = owned(s, "t", "p").await;
    assert_eq!(s.kept_state(&ns).await.expect("read"), None);
    s.save_state(&ns, t, "abc".into(), b"state".to_vec())
        .await
        .expect("save");
    let kept = Some(("abc".to_owned(), b"state".to_vec()));
    assert_eq!(s.kept_state(&ns).await.expect("read"), kept);
    assert_eq!(s.kept_state(&ns).await.expect("read"), kept, "reading keeps it");
    s.save_state(&ns, t, "def".into(), b"newer".to_vec())
        .await
        .expect("save");
    assert_eq!(
        s.kept_state(&ns).await.expect("read").map(|(v, _)| v),
        Some("def".to_owned())
    );
    assert_eq!(
        s.list(&ns, String::new(), 10).await.expect("list"),
        Vec::<String>::new(),
        "not visible as data"
    );
}

async fn data_survives_reopening(f: Fixture) {
    let (ns, t) = owned(&f.storage, "t", "p").await;
    f.storage
        .set(&ns, t, "k".into(), b"v".to_vec(), LIMITS)
        .await
        .expect("set");
    let again = f.again().await;
    assert_eq!(again.get(&ns, "k".into()).await.expect("get"), Some(b"v".to_vec()));
}

async fn a_stale_owner_cannot_write(f: Fixture) {
    let s = &f.storage;
    let (ns, old) = owned(s, "t", "p").await;
    s.set(&ns, old, "k".into(), b"old".to_vec(), LIMITS).await.expect("set");
    let new = s.claim(&ns, 0).await.expect("a new owner");
    assert!(new > old);
    for refused in [
        s.set(&ns, old, "k".into(), b"stale".to_vec(), LIMITS).await,
        s.delete(&ns, old, "k".into()).await.map(|_| ()),
        s.save_state(&ns, old, "v".into(), b"stale".to_vec()).await,
    ] {
        assert_eq!(refused, Err(StorageError::Fenced));
    }
    assert_eq!(s.get(&ns, "k".into()).await.expect("get"), Some(b"old".to_vec()));
    assert_eq!(s.kept_state(&ns).await.expect("read"), None);
    s.set(&ns, new, "k".into(), b"new".to_vec(), LIMITS)
        .await
        .expect("the owner writes");
    // A never-claimed namespace has no owner to write as.
    let unclaimed = Namespace::new("t", "q");
    assert_eq!(
        s.set(&unclaimed, 1, "k".into(), b"x".to_vec(), LIMITS).await,
        Err(StorageError::Fenced)
    );
}

async fn a_tenant_is_exported_and_erased(f: Fixture) {
    let s = &f.storage;
    let (chat, tc) = owned(s, "acme", "chat").await;
    let (metering, tm) = owned(s, "acme", "metering").await;
    let (other, to) = owned(s, "acme-2", "chat").await;
    s.set(&chat, tc, "b".into(), b"2".to_vec(), LIMITS).await.expect("set");
    s.set(&chat, tc, "a".into(), b"1".to_vec(), LIMITS).await.expect("set");
    s.save_state(&metering, tm, "v1".into(), b"{}".to_vec())
        .await
        .expect("save");
    s.set(&other, to, "a".into(), b"other".to_vec(), LIMITS)
        .await
        .expect("set");

    let exported = s.export("acme").await.expect("export");
    assert_eq!(
        exported,
        vec![
            TenantData {
                plugin: "chat".into(),
                keys: vec![("a".into(), b"1".to_vec()), ("b".into(), b"2".to_vec())],
                state: None,
            },
            TenantData {
                plugin: "metering".into(),
                keys: vec![],
                state: Some(("v1".into(), b"{}".to_vec())),
            },
        ]
    );
    s.erase("acme").await.expect("erase");
    assert_eq!(s.export("acme").await.expect("export"), vec![]);
    assert_eq!(s.used(&chat).await.expect("used"), 0);
    assert_eq!(
        s.get(&other, "a".into()).await.expect("get"),
        Some(b"other".to_vec()),
        "acme-2 stays"
    );
    // The owner before the erase cannot write it back.
    assert_eq!(
        s.set(&chat, tc, "a".into(), b"x".to_vec(), LIMITS).await,
        Err(StorageError::Fenced)
    );
    // Re-created: it starts empty.
    let fresh = s.claim(&chat, 0).await.expect("claim");
    s.set(&chat, fresh, "a".into(), b"new".to_vec(), LIMITS)
        .await
        .expect("set");
}

// Jobs, schedules and webhooks (see `jobs.rs`).

const MAX_PENDING: u64 = 100;

fn now() -> u64 {
    crate::clock::unix_ms()
}

/// A plugin job of `kind`, due at `run_at_ms`.
fn new_job(kind: &str, run_at_ms: u64) -> NewJob {
    NewJob {
        class: jobs::JobClass::Plugin,
        kind: kind.into(),
        payload: format!("{kind}!").into_bytes(),
        run_at_ms,
        max_attempts: 3,
        base_delay_ms: 1_000,
        max_delay_ms: 60_000,
        timeout_ms: Some(5_000),
        unique: None,
        schedule: None,
    }
}

/// A due job of `kind` with unique `key`.
fn unique_job(kind: &str, key: &str, until_ms: u64, replace: bool) -> NewJob {
    NewJob {
        unique: Some(jobs::Unique {
            key: key.into(),
            until_ms,
            replace,
        }),
        ..new_job(kind, now() - 1)
    }
}

/// Job `id` of `tenant` as kept, if it is.
async fn find(s: &Storage, tenant: &str, id: JobId) -> Option<Job> {
    let all = s.jobs_of(tenant, 1_000).await.expect("jobs");
    all.into_iter().find(|j| j.id == id)
}

async fn enqueue(s: &Storage, ns: &Namespace, t: u64, job: NewJob) -> JobId {
    s.enqueue(ns, t, job, MAX_PENDING).await.expect("enqueue")
}

async fn start(s: &Storage, ns: &Namespace, t: u64) -> Job {
    s.start_job(ns, t, Lane::Instance)
        .await
        .expect("start")
        .expect("a due job")
}

async fn a_job_runs_and_is_done(f: Fixture) {
    let s = &f.storage;
    let (ns, t) = owned(s, "acme", "chat").await;
    let id = enqueue(s, &ns, t, new_job("mail", now() - 1)).await;
    let kept = find(s, "acme", id).await.expect("kept");
    assert_eq!(
        (kept.state, kept.attempt, kept.payload.as_slice(), kept.kind.as_str()),
        (jobs::JobState::Scheduled, 0, b"mail!".as_slice(), "mail")
    );
    assert_eq!((kept.tenant.as_str(), kept.plugin.as_str()), ("acme", "chat"));
    assert_eq!(s.job_totals().await.expect("totals"), (1, 0));

    let job = start(s, &ns, t).await;
    assert_eq!(job.id, id);
    assert_eq!((job.state, job.attempt, job.token), (jobs::JobState::Running, 1, t));
    assert_eq!(job.payload, b"mail!");
    assert_eq!(job.timeout_ms, Some(5_000));
    assert_eq!(find(s, "acme", id).await.expect("kept").state, jobs::JobState::Running);
    assert_eq!(s.job_totals().await.expect("totals"), (0, 1));
    assert!(
        s.start_job(&ns, t, Lane::Instance).await.expect("start").is_none(),
        "nothing else is due"
    );

    assert!(s.finish_job(&ns, t, id, Finish::Done, None).await.expect("finish"));
    assert_eq!(find(s, "acme", id).await, None, "done is removed");
    assert_eq!(s.job_totals().await.expect("totals"), (0, 0));
    assert!(
        !s.finish_job(&ns, t, id, Finish::Done, None).await.expect("finish"),
        "a job that is gone is not finished twice"
    );
}

async fn a_retry_keeps_its_attempt_and_a_snooze_gives_it_back(f: Fixture) {
    let s = &f.storage;
    let (ns, t) = owned(s, "acme", "chat").await;
    let id = enqueue(s, &ns, t, new_job("mail", now() - 1)).await;
    start(s, &ns, t).await;
    let at = now() - 1;
    let retry = Finish::Retry {
        run_at_ms: at,
        error: "timed out".into(),
    };
    assert!(s.finish_job(&ns, t, id, retry, None).await.expect("finish"));
    let kept = find(s, "acme", id).await.expect("kept");
    assert_eq!(
        (kept.state, kept.run_at_ms, kept.attempt, kept.last_error.as_deref()),
        (jobs::JobState::Scheduled, at, 1, Some("timed out"))
    );

    let job = start(s, &ns, t).await;
    assert_eq!((job.id, job.attempt), (id, 2), "the second attempt");
    let later = now() + 3_600_000;
    let snooze = Finish::Snooze { run_at_ms: later };
    assert!(s.finish_job(&ns, t, id, snooze, None).await.expect("finish"));
    let kept = find(s, "acme", id).await.expect("kept");
    assert_eq!(
        (kept.state, kept.run_at_ms, kept.attempt),
        (jobs::JobState::Scheduled, later, 1),
        "a snooze gives the attempt back"
    );
    assert!(
        s.start_job(&ns, t, Lane::Instance).await.expect("start").is_none(),
        "not due yet"
    );
}

async fn a_dead_job_is_kept_and_frees_the_quota(f: Fixture) {
    let s = &f.storage;
    let (ns, t) = owned(s, "acme", "chat").await;
    let a = s.enqueue(&ns, t, new_job("a", now() - 2), 2).await.expect("a");
    let b = s.enqueue(&ns, t, new_job("b", now() - 1), 2).await.expect("b");
    assert_eq!(
        s.enqueue(&ns, t, new_job("c", now()), 2).await,
        Err(EnqueueError::TooMany)
    );
    assert_eq!(start(s, &ns, t).await.id, a);
    let dead = Finish::Dead {
        error: "gave up".into(),
    };
    assert!(s.finish_job(&ns, t, a, dead, None).await.expect("finish"));
    let kept = find(s, "acme", a).await.expect("kept");
    assert_eq!(
        (kept.state, kept.last_error.as_deref(), kept.attempt),
        (jobs::JobState::Dead, Some("gave up"), 1)
    );
    assert!(
        s.start_job(&ns, t, Lane::Instance)
            .await
            .expect("start")
            .is_some_and(|j| j.id == b)
    );
    let c = s
        .enqueue(&ns, t, new_job("c", now()), 2)
        .await
        .expect("a dead job is not pending");
    assert_eq!(
        s.enqueue(&ns, t, new_job("d", now()), 2).await,
        Err(EnqueueError::TooMany)
    );

    // Cancelling: a scheduled job, not a running one, a dead one only when asked.
    assert!(!s.cancel_job(&ns, Some(t), b, false).await.expect("cancel"), "running");
    assert!(!s.cancel_job(&ns, Some(t), a, false).await.expect("cancel"), "dead");
    assert!(s.cancel_job(&ns, Some(t), c, false).await.expect("cancel"));
    assert_eq!(find(s, "acme", c).await, None);
    s.enqueue(&ns, t, new_job("d", now() + 60_000), 2)
        .await
        .expect("c's place is free");
    // An operator's retry makes the dead job due again, with fresh attempts.
    assert!(s.retry_dead(&ns, a).await.expect("retry"));
    assert!(!s.retry_dead(&ns, a).await.expect("retry"), "no longer dead");
    let kept = find(s, "acme", a).await.expect("kept");
    assert_eq!((kept.state, kept.attempt), (jobs::JobState::Scheduled, 0));
    assert_eq!(
        s.enqueue(&ns, t, new_job("e", now()), 3).await,
        Err(EnqueueError::TooMany),
        "pending again"
    );
    let dead = Finish::Dead { error: "again".into() };
    assert_eq!(start(s, &ns, t).await.id, a);
    assert!(s.finish_job(&ns, t, a, dead, None).await.expect("finish"));
    assert!(
        s.cancel_job(&ns, None, a, true)
            .await
            .expect("an operator cancels a dead job")
    );
    assert_eq!(find(s, "acme", a).await, None);
}

async fn unique_keys_hold_replace_and_free(f: Fixture) {
    let s = &f.storage;
    let (ns, t) = owned(s, "acme", "chat").await;
    let a = enqueue(s, &ns, t, unique_job("a", "plugin:k", 0, false)).await;
    assert_eq!(
        s.enqueue(&ns, t, unique_job("b", "plugin:k", 0, false), MAX_PENDING)
            .await,
        Err(EnqueueError::Duplicate(a)),
        "held while pending"
    );
    assert_eq!(s.scheduled_with_key(&ns, "plugin:k").await.expect("key"), Some(a));
    // Another namespace's key is another key.
    let (other, to) = owned(s, "acme", "metering").await;
    enqueue(s, &other, to, unique_job("a", "plugin:k", 0, false)).await;

    // A replacing job takes a scheduled one's place, even at the quota.
    let c = s
        .enqueue(&ns, t, unique_job("c", "plugin:k", 0, true), 1)
        .await
        .expect("replaces");
    assert_eq!(find(s, "acme", a).await, None, "replaced");
    assert_eq!(s.scheduled_with_key(&ns, "plugin:k").await.expect("key"), Some(c));
    assert_eq!(
        s.enqueue(&ns, t, new_job("x", now()), 1).await,
        Err(EnqueueError::TooMany)
    );

    // A running job is not replaced, but a replacing job takes its key over
    // (a named timer set again from its own `on-timer`): the end of the
    // running one leaves the new one's key alone.
    assert_eq!(start(s, &ns, t).await.id, c);
    assert_eq!(s.scheduled_with_key(&ns, "plugin:k").await.expect("key"), None);
    let taken = enqueue(s, &ns, t, unique_job("again", "plugin:k", 0, true)).await;
    assert!(s.finish_job(&ns, t, c, Finish::Done, None).await.expect("finish"));
    assert_eq!(s.scheduled_with_key(&ns, "plugin:k").await.expect("key"), Some(taken));
    assert_eq!(
        s.enqueue(&ns, t, unique_job("d", "plugin:k", 0, false), MAX_PENDING)
            .await,
        Err(EnqueueError::Duplicate(taken)),
        "a job that does not replace waits its turn"
    );
    // Freed when it is cancelled.
    assert!(s.cancel_job(&ns, Some(t), taken, false).await.expect("cancel"));
    let d = enqueue(s, &ns, t, unique_job("d", "plugin:k", 0, false)).await;
    // Freed when it dies (its period over).
    assert_eq!(start(s, &ns, t).await.id, d);
    let dead = Finish::Dead { error: "no".into() };
    assert!(s.finish_job(&ns, t, d, dead, None).await.expect("finish"));
    let e = enqueue(s, &ns, t, unique_job("e", "plugin:k", 0, false)).await;
    assert!(s.cancel_job(&ns, Some(t), e, false).await.expect("cancel"));
    let f = enqueue(s, &ns, t, unique_job("f", "plugin:k", 0, false)).await;
    assert!(s.cancel_job(&ns, Some(t), f, false).await.expect("cancel"));

    // A unique period holds the key after the job ended, until it is over.
    let until = now() + 1_500;
    let g = enqueue(s, &ns, t, unique_job("g", "plugin:period", until, false)).await;
    assert_eq!(start(s, &ns, t).await.id, g);
    assert!(s.finish_job(&ns, t, g, Finish::Done, None).await.expect("finish"));
    let refused = s
        .enqueue(&ns, t, unique_job("h", "plugin:period", 0, false), MAX_PENDING)
        .await;
    if now() < until {
        assert_eq!(refused, Err(EnqueueError::Duplicate(g)), "within the period");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match s
            .enqueue(&ns, t, unique_job("h", "plugin:period", 0, false), MAX_PENDING)
            .await
        {
            Ok(_) => break,
            Err(EnqueueError::Duplicate(id)) if id == g && std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await
            }
            Err(e) => panic!("still refused after the period: {e}"),
        }
    }
    assert!(now() >= until, "the key was free only after its period");
}

async fn start_takes_the_earliest_due_job_of_its_lane(f: Fixture) {
    let s = &f.storage;
    let (ns, t) = owned(s, "acme", "chat").await;
    let base = now();
    let later = enqueue(s, &ns, t, new_job("later", base + 3_600_000)).await;
    let second = enqueue(s, &ns, t, new_job("second", base - 1_000)).await;
    let first = enqueue(s, &ns, t, new_job("first", base - 2_000)).await;
    let webhook = NewJob {
        class: jobs::JobClass::Webhook,
        ..new_job("webhook", base - 5_000)
    };
    let webhook = enqueue(s, &ns, t, webhook).await;
    assert_eq!(s.next_due(Lane::Instance).await.expect("next"), Some(base - 2_000));
    assert_eq!(s.next_due(Lane::Delivery).await.expect("next"), Some(base - 5_000));
    assert_eq!(start(s, &ns, t).await.id, first);
    assert_eq!(start(s, &ns, t).await.id, second);
    assert!(
        s.start_job(&ns, t, Lane::Instance).await.expect("start").is_none(),
        "the webhook is another lane's, the last is not due"
    );
    assert_eq!(s.next_due(Lane::Instance).await.expect("next"), Some(base + 3_600_000));
    let delivery = s.start_job(&ns, t, Lane::Delivery).await.expect("start").expect("due");
    assert_eq!((delivery.id, delivery.class), (webhook, jobs::JobClass::Webhook));
    assert_eq!(s.next_due(Lane::Delivery).await.expect("next"), None);
    assert_eq!(
        find(s, "acme", later).await.expect("kept").state,
        jobs::JobState::Scheduled
    );
    assert_eq!(s.job_totals().await.expect("totals"), (1, 3));
}

async fn due_namespaces_come_earliest_first_but_the_busy(f: Fixture) {
    let s = &f.storage;
    let base = now();
    let mut spaces = Vec::new();
    for (plugin, run_at) in [
        ("a", base - 3_000),
        ("b", base - 1_000),
        ("c", base - 2_000),
        ("d", base + 3_600_000),
    ] {
        let (ns, t) = owned(s, "acme", plugin).await;
        enqueue(s, &ns, t, new_job("x", run_at)).await;
        spaces.push(ns);
    }
    // A later job of a namespace does not move it.
    let (a, ta) = owned(s, "acme", "a").await;
    enqueue(s, &a, ta, new_job("y", base - 500)).await;
    let (a, b, c) = (spaces[0].clone(), spaces[1].clone(), spaces[2].clone());
    let due = |busy: &[&Namespace], limit| {
        let busy = busy.iter().map(|ns| (*ns).clone()).collect();
        s.due_namespaces(Lane::Instance, busy, limit)
    };
    assert_eq!(due(&[], 10).await.expect("due"), vec![a.clone(), c.clone(), b.clone()]);
    assert_eq!(due(&[&c], 10).await.expect("due"), vec![a.clone(), b.clone()]);
    assert_eq!(due(&[], 2).await.expect("due"), vec![a.clone(), c.clone()]);
    assert_eq!(due(&[&a], 1).await.expect("due"), vec![c.clone()]);
    let none = s
        .due_namespaces(Lane::Delivery, Default::default(), 10)
        .await
        .expect("due");
    assert_eq!(none, vec![]);
    // A namespace whose jobs all run is not due.
    let (a, ta) = owned(s, "acme", "a").await;
    start(s, &a, ta).await;
    start(s, &a, ta).await;
    assert_eq!(due(&[], 10).await.expect("due"), vec![c, b]);
}

async fn stale_owners_cannot_start_or_finish(f: Fixture) {
    let s = &f.storage;
    let (ns, old) = owned(s, "acme", "chat").await;
    let a = enqueue(s, &ns, old, new_job("a", now() - 2)).await;
    let b = enqueue(s, &ns, old, new_job("b", now() - 1)).await;
    let new = s.claim(&ns, 0).await.expect("a new owner");
    assert_eq!(s.start_job(&ns, old, Lane::Instance).await, Err(StorageError::Fenced));
    assert_eq!(
        s.enqueue(&ns, old, new_job("c", now()), MAX_PENDING).await,
        Err(EnqueueError::Storage(StorageError::Fenced))
    );
    assert_eq!(start(s, &ns, new).await.id, a);
    assert_eq!(
        s.finish_job(&ns, old, a, Finish::Done, None).await,
        Err(StorageError::Fenced)
    );
    assert_eq!(find(s, "acme", a).await.expect("kept").state, jobs::JobState::Running);
    // The owner finishing a job that does not run: nothing changes.
    assert!(!s.finish_job(&ns, new, b, Finish::Done, None).await.expect("finish"));
    assert_eq!(find(s, "acme", b).await.expect("kept").state, jobs::JobState::Scheduled);
    assert!(s.finish_job(&ns, new, a, Finish::Done, None).await.expect("finish"));
    // Schedules are fenced too.
    let schedule = Schedule {
        name: "tick".into(),
        cron: "* * * * *".into(),
        kind: "tick".into(),
        payload: vec![],
        next_ms: now(),
    };
    assert_eq!(
        s.put_schedule(&ns, old, schedule.clone()).await,
        Err(StorageError::Fenced)
    );
    s.put_schedule(&ns, new, schedule).await.expect("put");
    assert_eq!(s.remove_schedule(&ns, old, "tick").await, Err(StorageError::Fenced));
    assert_eq!(s.cancel_job(&ns, Some(old), b, false).await, Err(StorageError::Fenced));
    assert_eq!(s.schedules_of("acme").await.expect("schedules").len(), 1);
}

async fn a_claim_rescues_the_running_jobs_of_its_namespace(f: Fixture) {
    let s = &f.storage;
    let (ns, old) = owned(s, "acme", "chat").await;
    let (other, to) = owned(s, "acme", "metering").await;
    let a = enqueue(s, &ns, old, new_job("a", now() - 1_000)).await;
    let b = enqueue(s, &other, to, new_job("b", now() - 1_000)).await;
    assert_eq!(start(s, &ns, old).await.id, a);
    assert_eq!(start(s, &other, to).await.id, b);

    let before = now();
    let new = s.claim(&ns, 0).await.expect("a new owner");
    let rescued = find(s, "acme", a).await.expect("kept");
    assert_eq!(rescued.state, jobs::JobState::Scheduled);
    assert!(rescued.run_at_ms >= before, "due now");
    assert_eq!(
        rescued.last_error.as_deref(),
        Some("its owner ended during the attempt")
    );
    assert_eq!(rescued.attempt, 1, "the attempt counts");
    assert_eq!(
        find(s, "acme", b).await.expect("kept").state,
        jobs::JobState::Running,
        "another namespace's job runs on"
    );
    // The old owner's late finish changes nothing: it is fenced, and the
    // new owner did not start it.
    assert_eq!(
        s.finish_job(&ns, old, a, Finish::Done, None).await,
        Err(StorageError::Fenced)
    );
    assert!(!s.finish_job(&ns, new, a, Finish::Done, None).await.expect("finish"));
    assert_eq!(find(s, "acme", a).await.expect("kept").state, jobs::JobState::Scheduled);
    let again = start(s, &ns, new).await;
    assert_eq!((again.id, again.attempt, again.token), (a, 2, new));
    // A claim by the same owner's next task leaves nothing running behind.
    let newer = s.claim(&ns, 0).await.expect("claim");
    assert_eq!(find(s, "acme", a).await.expect("kept").state, jobs::JobState::Scheduled);
    assert_eq!(newer, new + 1);
    assert_eq!(find(s, "acme", b).await.expect("kept").state, jobs::JobState::Running);
}

async fn a_schedule_slot_fires_once(f: Fixture) {
    let s = &f.storage;
    let (ns, t) = owned(s, "acme", "chat").await;
    let slot = now() - 1_000;
    let next = now() + 60_000;
    let schedule = Schedule {
        name: "tick".into(),
        cron: "* * * * *".into(),
        kind: "tick".into(),
        payload: b"p".to_vec(),
        next_ms: slot,
    };
    s.put_schedule(&ns, t, schedule.clone()).await.expect("put");
    assert_eq!(
        s.due_schedules(10).await.expect("due"),
        vec![(ns.clone(), schedule.clone())]
    );
    let job = || NewJob {
        schedule: Some("tick".into()),
        ..new_job("tick", slot)
    };
    let fire = || s.fire_schedule(&ns, "tick", slot, next, job(), MAX_PENDING);
    assert_eq!(fire().await, Ok(Ok(true)));
    assert_eq!(fire().await, Ok(Ok(false)), "the slot is taken");
    let jobs = s.jobs_of("acme", 10).await.expect("jobs");
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].schedule.as_deref(), Some("tick"));
    assert_eq!(s.due_schedules(10).await.expect("due"), vec![]);
    let moved = Schedule {
        next_ms: next,
        ..schedule.clone()
    };
    assert_eq!(
        s.schedules_of("acme").await.expect("schedules"),
        vec![("chat".to_owned(), moved)]
    );
    // A slot past the quota moves on without its job.
    let later = next + 60_000;
    assert_eq!(
        s.fire_schedule(&ns, "tick", next, later, job(), 1).await,
        Ok(Err(EnqueueError::TooMany))
    );
    assert_eq!(s.schedules_of("acme").await.expect("schedules")[0].1.next_ms, later);
    assert_eq!(s.jobs_of("acme", 10).await.expect("jobs").len(), 1);
    // A removed schedule fires no more.
    assert!(s.remove_schedule(&ns, t, "tick").await.expect("remove"));
    assert!(!s.remove_schedule(&ns, t, "tick").await.expect("remove"));
    assert_eq!(
        s.fire_schedule(&ns, "tick", later, later + 1, job(), MAX_PENDING).await,
        Ok(Ok(false))
    );
}

async fn a_schedule_declared_again_keeps_its_slot(f: Fixture) {
    let s = &f.storage;
    let (ns, t) = owned(s, "acme", "chat").await;
    let schedule = Schedule {
        name: "tick".into(),
        cron: "*/5 * * * *".into(),
        kind: "tick".into(),
        payload: b"p".to_vec(),
        next_ms: now() + 300_000,
    };
    s.put_schedule(&ns, t, schedule.clone()).await.expect("put");
    let same = Schedule {
        next_ms: now() + 600_000,
        ..schedule.clone()
    };
    s.put_schedule(&ns, t, same).await.expect("put");
    assert_eq!(
        s.schedules_of("acme").await.expect("schedules"),
        vec![("chat".to_owned(), schedule.clone())],
        "identical: its next slot stays"
    );
    let changed = Schedule {
        cron: "*/10 * * * *".into(),
        next_ms: now() - 1,
        ..schedule.clone()
    };
    s.put_schedule(&ns, t, changed.clone()).await.expect("put");
    assert_eq!(
        s.schedules_of("acme").await.expect("schedules"),
        vec![("chat".to_owned(), changed.clone())]
    );
    assert_eq!(s.due_schedules(10).await.expect("due"), vec![(ns.clone(), changed)]);
    let (metering, tm) = owned(s, "acme", "metering").await;
    let payload = Schedule {
        payload: b"other".to_vec(),
        ..schedule.clone()
    };
    s.put_schedule(&metering, tm, payload.clone()).await.expect("put");
    assert_eq!(s.schedules_of("acme").await.expect("schedules").len(), 2);
    assert_eq!(
        s.schedules_of("acme").await.expect("schedules")[1],
        ("metering".to_owned(), payload)
    );
}

fn endpoint(name: &str) -> Endpoint {
    Endpoint {
        name: name.into(),
        url: format!("https://example.com/{name}"),
        secret: "whsec_c2VjcmV0".into(),
        enabled: true,
        failing_since_ms: None,
        disabled_reason: None,
    }
}

fn delivery(n: u32) -> Delivery {
    Delivery {
        at_ms: 1_000 + u64::from(n),
        plugin: "chat".into(),
        message_id: format!("msg_{n}"),
        endpoint: "orders".into(),
        event_type: "order.paid".into(),
        attempt: n,
        status: n.is_multiple_of(2).then_some(200),
        error: (!n.is_multiple_of(2)).then(|| "refused".to_owned()),
        took_ms: 12,
        delivered: n.is_multiple_of(2),
    }
}

async fn webhook_endpoints_and_the_delivery_log(f: Fixture) {
    let s = &f.storage;
    s.put_endpoint("acme", endpoint("orders")).await.expect("put");
    s.put_endpoint("acme", endpoint("billing")).await.expect("put");
    s.put_endpoint("acme-2", endpoint("orders")).await.expect("put");
    assert_eq!(
        s.endpoints("acme").await.expect("endpoints"),
        vec![endpoint("billing"), endpoint("orders")]
    );
    let disabled = Endpoint {
        enabled: false,
        failing_since_ms: Some(5),
        disabled_reason: Some("failing for 5 days".into()),
        ..endpoint("orders")
    };
    s.put_endpoint("acme", disabled.clone()).await.expect("replace");
    assert_eq!(
        s.endpoints("acme").await.expect("endpoints"),
        vec![endpoint("billing"), disabled]
    );
    assert!(s.remove_endpoint("acme", "billing").await.expect("remove"));
    assert!(!s.remove_endpoint("acme", "billing").await.expect("remove"));
    assert_eq!(s.endpoints("acme").await.expect("endpoints").len(), 1);
    assert_eq!(
        s.endpoints("acme-2").await.expect("endpoints"),
        vec![endpoint("orders")]
    );

    for n in 1..=5 {
        s.log_delivery("acme", delivery(n), 3).await.expect("log");
        s.log_delivery("acme-2", delivery(10 + n), 10).await.expect("log");
    }
    assert_eq!(
        s.deliveries("acme", 10).await.expect("log"),
        vec![delivery(5), delivery(4), delivery(3)],
        "the last three, newest first"
    );
    assert_eq!(
        s.deliveries("acme", 2).await.expect("log"),
        vec![delivery(5), delivery(4)]
    );
    assert_eq!(s.deliveries("acme-2", 10).await.expect("log").len(), 5);
    assert_eq!(s.deliveries("globex", 10).await.expect("log"), vec![]);
}

async fn an_erase_removes_a_tenants_jobs(f: Fixture) {
    let s = &f.storage;
    let mut kept = Vec::new();
    for tenant in ["acme", "acme-2"] {
        for plugin in ["chat", "metering"] {
            let (ns, t) = owned(s, tenant, plugin).await;
            enqueue(s, &ns, t, new_job("scheduled", now() + 60_000)).await;
            enqueue(s, &ns, t, unique_job("running", "plugin:k", now() + 60_000, false)).await;
            start(s, &ns, t).await;
            let schedule = Schedule {
                name: "tick".into(),
                cron: "* * * * *".into(),
                kind: "tick".into(),
                payload: vec![],
                next_ms: now() - 1,
            };
            s.put_schedule(&ns, t, schedule).await.expect("put");
            kept.push(ns);
        }
        s.put_endpoint(tenant, endpoint("orders")).await.expect("put");
        s.log_delivery(tenant, delivery(1), 10).await.expect("log");
    }
    s.erase("acme").await.expect("erase");
    assert_eq!(s.jobs_of("acme", 10).await.expect("jobs"), vec![]);
    assert_eq!(s.schedules_of("acme").await.expect("schedules"), vec![]);
    assert_eq!(s.endpoints("acme").await.expect("endpoints"), vec![]);
    assert_eq!(s.deliveries("acme", 10).await.expect("log"), vec![]);
    assert_eq!(s.job_totals().await.expect("totals"), (2, 2), "acme-2's");
    let due = s.due_schedules(10).await.expect("due");
    assert!(due.iter().all(|(ns, _)| ns.tenant == "acme-2") && due.len() == 2);

    assert_eq!(s.jobs_of("acme-2", 10).await.expect("jobs").len(), 4);
    assert_eq!(s.schedules_of("acme-2").await.expect("schedules").len(), 2);
    assert_eq!(s.endpoints("acme-2").await.expect("endpoints").len(), 1);
    assert_eq!(s.deliveries("acme-2", 10).await.expect("log").len(), 1);

    // Claimed again, acme starts empty: its keys and quota are free.
    let (ns, t) = owned(s, "acme", "chat").await;
    s.enqueue(&ns, t, unique_job("again", "plugin:k", 0, false), 1)
        .await
        .expect("the key and the quota are free");
    assert_eq!(
        s.start_job(&kept[0], t, Lane::Instance)
            .await
            .expect("start")
            .map(|j| j.kind),
        Some("again".to_owned())
    );
}

async fn jobs_survive_reopening(f: Fixture) {
    let (ns, t) = owned(&f.storage, "acme", "chat").await;
    let scheduled = enqueue(&f.storage, &ns, t, new_job("scheduled", now() + 60_000)).await;
    let running = enqueue(&f.storage, &ns, t, new_job("running", now() - 1)).await;
    assert_eq!(start(&f.storage, &ns, t).await.id, running);
    let schedule = Schedule {
        name: "tick".into(),
        cron: "* * * * *".into(),
        kind: "tick".into(),
        payload: vec![1],
        next_ms: now() + 60_000,
    };
    f.storage.put_schedule(&ns, t, schedule.clone()).await.expect("put");
    f.storage.put_endpoint("acme", endpoint("orders")).await.expect("put");

    let s = f.again().await;
    let jobs = s.jobs_of("acme", 10).await.expect("jobs");
    assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![scheduled, running]);
    assert_eq!(
        s.schedules_of("acme").await.expect("schedules"),
        vec![("chat".to_owned(), schedule)]
    );
    assert_eq!(s.endpoints("acme").await.expect("endpoints"), vec![endpoint("orders")]);
    let left = find(&s, "acme", running).await.expect("kept");
    match f.config.backend {
        // One process opens the file: what the last one left running is
        // due again at once.
        StorageBackend::Redb => {
            assert_eq!(left.state, jobs::JobState::Scheduled);
            assert_eq!(
                s.due_namespaces(Lane::Instance, Default::default(), 10)
                    .await
                    .expect("due"),
                vec![ns.clone()]
            );
        }
        // Another host may still run it: it is rescued when the namespace
        // is claimed.
        StorageBackend::Postgres => assert_eq!(left.state, jobs::JobState::Running),
    }
    let t = s.claim(&ns, 0).await.expect("claim");
    let again = start(&s, &ns, t).await;
    assert_eq!((again.id, again.attempt), (running, 2));
    // Ids stay unique after the reopening.
    let next = enqueue(&s, &ns, t, new_job("next", now())).await;
    assert!(next > running);
}

async fn jobs_are_listed_by_id(f: Fixture) {
    let s = &f.storage;
    let (metering, tm) = owned(s, "acme", "metering").await;
    let (chat, tc) = owned(s, "acme", "chat").await;
    let first = enqueue(s, &metering, tm, new_job("first", now())).await;
    let second = enqueue(s, &metering, tm, new_job("second", now())).await;
    let third = enqueue(s, &chat, tc, new_job("third", now())).await;
    let (other, to) = owned(s, "acme-2", "chat").await;
    enqueue(s, &other, to, new_job("other", now())).await;
    let ids = |jobs: Vec<Job>| jobs.into_iter().map(|j| j.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.jobs_of("acme", 10).await.expect("jobs")),
        vec![first, second, third]
    );
    assert_eq!(
        ids(s.jobs_of("acme", 2).await.expect("jobs")),
        vec![first, second],
        "the first by id, whatever their plugin"
    );
}

/// A refused insert changes nothing, not even the scheduled job it would
/// have replaced (a schedule's slot moves on all the same).
async fn a_refused_insert_replaces_nothing(f: Fixture) {
    let s = &f.storage;
    let (ns, t) = owned(s, "acme", "chat").await;
    let a = enqueue(s, &ns, t, unique_job("a", "plugin:k", 0, false)).await;
    enqueue(s, &ns, t, new_job("b", now() + 60_000)).await;
    let slot = now() - 1;
    let schedule = Schedule {
        name: "tick".into(),
        cron: "* * * * *".into(),
        kind: "tick".into(),
        payload: vec![],
        next_ms: slot,
    };
    s.put_schedule(&ns, t, schedule).await.expect("put");
    let replacing = NewJob {
        schedule: Some("tick".into()),
        ..unique_job("tick", "plugin:k", 0, true)
    };
    assert_eq!(
        s.fire_schedule(&ns, "tick", slot, slot + 60_000, replacing.clone(), 1)
            .await,
        Ok(Err(EnqueueError::TooMany)),
        "two pending, the quota one: even with a replaced, over it"
    );
    assert_eq!(
        find(s, "acme", a).await.map(|j| j.state),
        Some(jobs::JobState::Scheduled)
    );
    assert_eq!(s.scheduled_with_key(&ns, "plugin:k").await.expect("key"), Some(a));
    assert_eq!(
        s.schedules_of("acme").await.expect("schedules")[0].1.next_ms,
        slot + 60_000
    );
    assert_eq!(
        s.enqueue(&ns, t, replacing.clone(), 1).await,
        Err(EnqueueError::TooMany)
    );
    assert_eq!(s.scheduled_with_key(&ns, "plugin:k").await.expect("key"), Some(a));
    let c = s
        .enqueue(&ns, t, replacing, 2)
        .await
        .expect("within the quota once a is replaced");
    assert_eq!(find(s, "acme", a).await, None);
    assert_eq!(s.scheduled_with_key(&ns, "plugin:k").await.expect("key"), Some(c));
}

async fn a_finished_job_enqueues_its_follow_up(f: Fixture) {
    let s = &f.storage;
    let (ns, t) = owned(s, "acme", "chat").await;
    // A named timer that sets itself again as it ends.
    let timer = |run_at_ms| NewJob {
        class: jobs::JobClass::Timer,
        run_at_ms,
        ..unique_job("tick", "timer:tick", 0, true)
    };
    let first = enqueue(s, &ns, t, timer(now() - 1)).await;
    assert_eq!(start(s, &ns, t).await.id, first);
    let later = now() + 60_000;
    assert!(
        s.finish_job(&ns, t, first, Finish::Done, Some(timer(later)))
            .await
            .expect("finish")
    );
    let next = s
        .scheduled_with_key(&ns, "timer:tick")
        .await
        .expect("key")
        .expect("set again");
    assert_ne!(next, first);
    let kept = find(s, "acme", next).await.expect("kept");
    assert_eq!(
        (kept.class, kept.run_at_ms, kept.attempt),
        (jobs::JobClass::Timer, later, 0)
    );
    assert_eq!(find(s, "acme", first).await, None);

    // A follow-up its key refuses is dropped; the attempt's end is not.
    let held = enqueue(s, &ns, t, unique_job("held", "plugin:held", now() + 60_000, false)).await;
    let other = enqueue(s, &ns, t, new_job("other", now() - 1)).await;
    assert_eq!(start(s, &ns, t).await.id, held);
    assert_eq!(start(s, &ns, t).await.id, other);
    let refused = unique_job("again", "plugin:held", 0, false);
    assert!(
        s.finish_job(&ns, t, other, Finish::Done, Some(refused))
            .await
            .expect("finish")
    );
    assert_eq!(find(s, "acme", other).await, None);
    assert!(
        s.jobs_of("acme", 10)
            .await
            .expect("jobs")
            .iter()
            .all(|j| j.kind != "again")
    );
    // Its own key, still in its period, refuses it too.
    let own = unique_job("again", "plugin:held", 0, false);
    assert!(
        s.finish_job(&ns, t, held, Finish::Done, Some(own))
            .await
            .expect("finish")
    );
    assert_eq!(s.jobs_of("acme", 10).await.expect("jobs").len(), 1, "only the timer");
    // A follow-up of a dead job, past the quota: it has none.
    let last = s.enqueue(&ns, t, new_job("last", now() - 1), 2).await.expect("enqueue");
    assert_eq!(start(s, &ns, t).await.id, last);
    let dead = Finish::Dead { error: "no".into() };
    let follow = new_job("follow", now() + 60_000);
    assert!(s.finish_job(&ns, t, last, dead, Some(follow)).await.expect("finish"));
    assert_eq!(s.jobs_of("acme", 10).await.expect("jobs").len(), 3);
    assert_eq!(
        s.enqueue(&ns, t, new_job("x", now()), 2).await,
        Err(EnqueueError::TooMany)
    );
}

/// Hosts (on redb, tasks of one) racing on one namespace: each job starts
/// once, a slot fires once, a unique key and the quota hold.
async fn racing_hosts_take_each_job_and_slot_once(f: Fixture) {
    let second = match f.config.backend {
        StorageBackend::Postgres => Some(f.again().await),
        StorageBackend::Redb => None,
    };
    let hosts = [&f.storage, second.as_ref().unwrap_or(&f.storage)];
    let (ns, t) = owned(&f.storage, "acme", "chat").await;
    let mut all = Vec::new();
    for n in 0..20 {
        all.push(enqueue(&f.storage, &ns, t, new_job(&format!("job-{n}"), now() - 1)).await);
    }
    let workers = (0..6).map(|w| {
        let (s, ns) = (hosts[w % 2], ns.clone());
        async move {
            let mut started = Vec::new();
            while let Some(job) = s.start_job(&ns, t, Lane::Instance).await.expect("start") {
                started.push(job.id);
                assert!(s.finish_job(&ns, t, job.id, Finish::Done, None).await.expect("finish"));
            }
            started
        }
    });
    let mut started: Vec<JobId> = futures_util::future::join_all(workers).await.concat();
    started.sort_unstable();
    assert_eq!(started, all, "every job, once");

    let slot = now() - 1;
    for name in ["a", "b", "c", "d"] {
        let schedule = Schedule {
            name: name.into(),
            cron: "* * * * *".into(),
            kind: name.into(),
            payload: vec![],
            next_ms: slot,
        };
        f.storage.put_schedule(&ns, t, schedule).await.expect("put");
    }
    let fires = ["a", "a", "b", "b", "c", "c", "d", "d"]
        .into_iter()
        .enumerate()
        .map(|(n, name)| {
            let (s, ns) = (hosts[n % 2], ns.clone());
            let job = NewJob {
                schedule: Some(name.into()),
                ..new_job(name, now() + 60_000)
            };
            async move {
                s.fire_schedule(&ns, name, slot, slot + 60_000, job, 2)
                    .await
                    .expect("fire")
            }
        });
    let mut fired = futures_util::future::join_all(fires).await;
    fired.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(
        fired,
        vec![
            Err(EnqueueError::TooMany),
            Err(EnqueueError::TooMany),
            Ok(false),
            Ok(false),
            Ok(false),
            Ok(false),
            Ok(true),
            Ok(true),
        ],
        "each slot once, two within the quota"
    );
    assert_eq!(f.storage.jobs_of("acme", 100).await.expect("jobs").len(), 2);

    let (other, to) = owned(&f.storage, "acme", "metering").await;
    let enqueues = (0..8).map(|n| {
        let (s, other) = (hosts[n % 2], other.clone());
        async move {
            s.enqueue(&other, to, unique_job("once", "plugin:once", 0, false), MAX_PENDING)
                .await
        }
    });
    let results = futures_util::future::join_all(enqueues).await;
    let ids: Vec<JobId> = results.iter().filter_map(|r| r.as_ref().ok().copied()).collect();
    assert_eq!(ids.len(), 1, "{results:?}");
    assert!(
        results
            .iter()
            .all(|r| r == &Ok(ids[0]) || r == &Err(EnqueueError::Duplicate(ids[0])))
    );
}

macro_rules! suite {
    ($backend:ident, $($case:ident),* $(,)?) => {
        #[allow(non_snake_case)]
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Fixture::new(crate::config::StorageBackend::$backend).await).await;
                }
            )*
        }
    };
}

macro_rules! both {
    ($($case:ident),* $(,)?) => {
        suite!(Redb, $($case),*);
        suite!(Postgres, $($case),*);
    };
}

both!(
    namespaces_do_not_see_each_other,
    lists_by_prefix_in_order,
    sizes_and_quotas_are_enforced,
    kept_states_stay_until_replaced,
    data_survives_reopening,
    a_stale_owner_cannot_write,
    a_tenant_is_exported_and_erased,
    a_job_runs_and_is_done,
    a_retry_keeps_its_attempt_and_a_snooze_gives_it_back,
    a_dead_job_is_kept_and_frees_the_quota,
    unique_keys_hold_replace_and_free,
    start_takes_the_earliest_due_job_of_its_lane,
    due_namespaces_come_earliest_first_but_the_busy,
    stale_owners_cannot_start_or_finish,
    a_claim_rescues_the_running_jobs_of_its_namespace,
    a_schedule_slot_fires_once,
    a_schedule_declared_again_keeps_its_slot,
    webhook_endpoints_and_the_delivery_log,
    an_erase_removes_a_tenants_jobs,
    jobs_survive_reopening,
    jobs_are_listed_by_id,
    a_refused_insert_replaces_nothing,
    a_finished_job_enqueues_its_follow_up,
    racing_hosts_take_each_job_and_slot_once,
);

/// Row-level security under the host's own scoping: a transaction scoped to
/// one namespace sees and writes only that namespace's rows, even with a
/// query that names no tenant at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rows_are_scoped_by_row_level_security() {
    let f = Fixture::new(StorageBackend::Postgres).await;
    let (acme, ta) = owned(&f.storage, "acme", "chat").await;
    let (globex, tg) = owned(&f.storage, "globex", "chat").await;
    f.storage
        .set(&acme, ta, "k".into(), b"a".to_vec(), LIMITS)
        .await
        .expect("set");
    f.storage
        .set(&globex, tg, "k".into(), b"g".to_vec(), LIMITS)
        .await
        .expect("set");

    let url = f.config.postgres_url.clone().expect("url");
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
        .batch_execute(&format!("BEGIN; {}", postgres::scope_sql("acme", "chat")))
        .await
        .expect("scope");
    let seen: i64 = client
        .query_one("SELECT count(*) FROM baton.kv", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(seen, 1, "only acme's row");
    let tokens: i64 = client
        .query_one("SELECT count(*) FROM baton.owners", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(tokens, 1, "only acme's owner row");
    let refused = client
        .execute(
            "INSERT INTO baton.kv (tenant, plugin, key, value) VALUES ('globex', 'chat', 'x', 'y')",
            &[],
        )
        .await
        .expect_err("another tenant's row");
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );
    client.batch_execute("ROLLBACK").await.expect("rollback");

    // Without a scope, nothing at all.
    client
        .batch_execute("BEGIN; SET LOCAL ROLE baton_kv")
        .await
        .expect("role");
    let seen: i64 = client
        .query_one("SELECT count(*) FROM baton.kv", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(seen, 0);
    client.batch_execute("ROLLBACK").await.expect("rollback");
}

/// A cluster's ownership leases order the claims: a node that lost the
/// tenant (an older lease) can neither claim it back nor write, however
/// late its claim arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_claims_under_an_older_lease_are_fenced() {
    let f = Fixture::new(StorageBackend::Postgres).await;
    let s = &f.storage;
    let ns = Namespace::new("acme", "chat");
    let old = s.claim(&ns, 5).await.expect("the first owner");
    s.set(&ns, old, "k".into(), b"old".to_vec(), LIMITS).await.expect("set");
    let new = s.claim(&ns, 9).await.expect("the node that took the tenant over");
    assert_eq!(
        s.claim(&ns, 5).await,
        Err(StorageError::Fenced),
        "the old owner claims again, too late"
    );
    assert_eq!(
        s.set(&ns, old, "k".into(), b"stale".to_vec(), LIMITS).await,
        Err(StorageError::Fenced)
    );
    s.set(&ns, new, "k".into(), b"new".to_vec(), LIMITS)
        .await
        .expect("the owner writes");
    let again = s
        .claim(&ns, 9)
        .await
        .expect("the same lease claims again (storage reopened)");
    assert!(again > new);
    assert_eq!(s.get(&ns, "k".into()).await.expect("get"), Some(b"new".to_vec()));
}
