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
