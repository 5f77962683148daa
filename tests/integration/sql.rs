//! PostgreSQL: the storage backend shared by hosts (with owner fencing), and
//! plugins' own SQL in a schema and role per tenant: isolation against what
//! a hostile plugin would run, the limits, and migrations bound to the swap.
//! Every test has a database of its own on the test process's throwaway
//! server (`baton-test-postgres`).

use baton_test_plugins::{CHAOS, SQL_CONSOLE, TASKS_V1, TASKS_V2};
use serde_json::{Value, json};

use crate::support::*;

const GRANT: &str = "[capabilities]\nsql = true\n";

/// A host on `db` with `plugins` deployed, each with its settings text,
/// and small SQL limits so that tests reach them quickly.
async fn host_on(db: &baton_test_postgres::Database, plugins: &[(&str, &str)], settings: &str) -> TestHost {
    let url = db.url.clone();
    let host = TestHost::start_with(&[], move |config| {
        config.storage.backend = baton::config::StorageBackend::Postgres;
        config.storage.postgres_url = Some(url);
        config.storage.sql.statement_timeout_ms = 500;
        config.storage.sql.quota_check_secs = 1;
        config.storage.sql.schema_quota_mib = 1;
        config.storage.sql.idle_close_secs = 1;
    })
    .await;
    for (name, file) in plugins {
        host.write_settings(name, settings);
        host.drop_file(name, &plugin_bytes(file));
        host.wait_current(name).await;
    }
    host
}

/// Runs `sql` through sql-console as `tenant`: `Ok(result)` or `Err(error)`.
async fn run(host: &TestHost, tenant: &str, route: &str, sql: &str) -> Result<Value, Value> {
    let response = host
        .http("POST", &format!("/t/{tenant}/sql-console/{route}"), sql.as_bytes())
        .await;
    let body = response.json();
    match response.status {
        200 => Ok(body["ok"].clone()),
        400 => Err(body["error"].clone()),
        other => panic!("{route} {sql:?}: HTTP {other}: {}", response.text()),
    }
}

async fn query(host: &TestHost, tenant: &str, sql: &str) -> Result<Value, Value> {
    run(host, tenant, "query", sql).await
}

/// Why the deploy folder's `name` was refused, once it was (the plugin is
/// unknown to the host until its file was looked at).
async fn refusal(host: &TestHost, name: &str) -> String {
    wait_for("the file is refused", async || {
        let response = host.admin("GET", &format!("/api/plugins/{name}"), None).await;
        if response.status != 200 {
            return None;
        }
        response.view::<baton::admin::PluginView>().last_error.map(|e| e.error)
    })
    .await
}

/// The SQLSTATE of an error, or its kind.
fn code(error: &Value) -> &str {
    error["code"].as_str().or(error["kind"].as_str()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_sql_cannot_reach_another_tenant() {
    let db = baton_test_postgres::database();
    let host = host_on(&db, &[("sql-console", SQL_CONSOLE)], GRANT).await;
    query(&host, "acme", "CREATE TABLE secrets (v text)")
        .await
        .expect("create");
    run(&host, "acme", "execute", "INSERT INTO secrets VALUES ('acme-secret')")
        .await
        .expect("insert");
    query(&host, "acme", "ANALYZE secrets").await.expect("analyze");
    let acme_schema = query(&host, "acme", "SELECT current_schema()").await.expect("schema")[0][0]
        .as_str()
        .expect("a name")
        .to_owned();
    assert!(
        acme_schema.starts_with("t_") && !acme_schema.contains("acme"),
        "{acme_schema}"
    );

    // Its own unqualified names are its own schema's.
    let missing = query(&host, "globex", "SELECT v FROM secrets")
        .await
        .expect_err("not globex's table");
    assert_eq!(code(&missing), "42P01");
    // Another schema by name, another role, the host's tables: refused.
    for attack in [
        format!("SELECT v FROM {acme_schema}.secrets"),
        format!("SET ROLE {acme_schema}"),
        "SET SESSION AUTHORIZATION postgres".into(),
        "SELECT * FROM baton.kv".into(),
        "SELECT * FROM baton.sql_roles".into(),
        "CREATE TABLE public.leak (v text)".into(),
        "CREATE TEMP TABLE scratch (v text)".into(),
        "CREATE ROLE another LOGIN".into(),
        "COPY (SELECT 1) TO '/tmp/baton-leak'".into(),
        "SELECT pg_read_file('/etc/passwd')".into(),
    ] {
        let refused = query(&host, "globex", &attack).await.expect_err(&attack);
        assert_eq!(code(&refused), "42501", "{attack}: {refused}");
    }
    // Setting-spoofing reaches nothing: the kv tables are not its to read.
    query(&host, "globex", "SELECT set_config('baton.tenant', 'acme', false)")
        .await
        .expect("any GUC can be set");
    let refused = query(&host, "globex", "SELECT count(*) FROM baton.kv")
        .await
        .expect_err("kv");
    assert_eq!(code(&refused), "42501");
    // Catalogs: names of schemas are visible (opaque), data is not.
    let stats = query(
        &host,
        "globex",
        "SELECT most_common_vals::text FROM pg_stats WHERE tablename = 'secrets'",
    )
    .await
    .expect("pg_stats");
    assert_eq!(stats, json!([]), "statistics of another tenant's table");
    let activity = query(
        &host,
        "globex",
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%secrets%' AND usename <> current_user",
    )
    .await
    .expect("activity");
    assert_eq!(activity, json!([[0]]));
    // And acme still has its row.
    assert_eq!(
        query(&host, "acme", "SELECT v FROM secrets").await.expect("select"),
        json!([["acme-secret"]])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_sql_limits_hold() {
    let db = baton_test_postgres::database();
    let host = host_on(&db, &[("sql-console", SQL_CONSOLE)], GRANT).await;
    // Typed values both ways.
    let echoed = host
        .http("GET", "/t/acme/sql-console/echo?text=hello", b"")
        .await
        .json();
    assert_eq!(
        echoed["ok"],
        json!([
            42,
            "hello",
            "12345.678",
            "{\"a\": [1, 2]}",
            "0b5a4f0e-3c1d-4e8a-9b2f-1a2b3c4d5e6f",
            1_700_000_000_123_i64,
            [0, 1, 255],
            null
        ])
    );
    // The role's statement timeout.
    assert_eq!(
        code(&query(&host, "acme", "SELECT pg_sleep(5)").await.expect_err("sleeps")),
        "timeout"
    );
    // A plugin that lowers it gets it back at its next call (the pool resets
    // every connection); within one transaction, the host's deadline holds.
    query(&host, "acme", "SET statement_timeout = 0").await.expect("set");
    assert_eq!(
        code(&query(&host, "acme", "SELECT pg_sleep(2)").await.expect_err("sleeps")),
        "timeout"
    );
    let long = r#"["SET LOCAL statement_timeout = 0", "SELECT pg_sleep(30)"]"#;
    let started = std::time::Instant::now();
    assert_eq!(
        code(&run(&host, "acme", "transaction", long).await.expect_err("sleeps")),
        "timeout"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // Results over the row limit are refused whole, never truncated.
    let many = query(&host, "acme", "SELECT generate_series(1, 5000)")
        .await
        .expect_err("5000 rows");
    assert_eq!(code(&many), "too-many-rows");
    // All or nothing.
    query(&host, "acme", "CREATE TABLE t (n integer PRIMARY KEY)")
        .await
        .expect("create");
    let duplicate = r#"["INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (1)"]"#;
    assert_eq!(
        code(&run(&host, "acme", "transaction", duplicate).await.expect_err("dup")),
        "23505"
    );
    assert_eq!(
        query(&host, "acme", "SELECT count(*) FROM t").await.expect("count"),
        json!([[0]])
    );

    // Over its disk quota (1 MiB here), a schema takes no more writes, but
    // reads and deletes.
    query(
        &host,
        "acme",
        "CREATE TABLE big AS SELECT repeat('x', 1000) AS v FROM generate_series(1, 3000)",
    )
    .await
    .expect("3 MB");
    let insert = "INSERT INTO t SELECT coalesce(max(n), 0) + 1 FROM t";
    wait_for("the quota is reached", async || {
        let refused = run(&host, "acme", "execute", insert).await.err()?;
        (code(&refused) == "quota-exceeded").then_some(())
    })
    .await;
    assert_eq!(
        query(&host, "acme", "SELECT count(*) FROM big").await.expect("reads"),
        json!([[3000]])
    );
    run(&host, "acme", "execute", "DROP TABLE big")
        .await
        .expect("frees space");
    wait_for("writes are taken again", async || {
        run(&host, "acme", "execute", insert).await.ok()
    })
    .await;
    // Another tenant was never limited.
    query(&host, "globex", "CREATE TABLE t (n integer)")
        .await
        .expect("globex writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_must_be_granted() {
    let db = baton_test_postgres::database();
    let host = host_on(&db, &[], "").await;
    host.drop_file("sql-console", &plugin_bytes(SQL_CONSOLE));
    let error = refusal(&host, "sql-console").await;
    assert!(error.contains("[capabilities] sql = true"), "{error}");
    // On a host without PostgreSQL, granting is not enough.
    let host = TestHost::start(&[]).await;
    host.write_settings("sql-console", GRANT);
    host.drop_file("sql-console", &plugin_bytes(SQL_CONSOLE));
    let error = refusal(&host, "sql-console").await;
    assert!(error.contains("storage.postgres_url"), "{error}");
}

/// Every frame of a client adding tasks while v2 is deployed is answered,
/// in order, by one version or the other; none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_moves_live_tenants_without_losing_a_frame() {
    let db = baton_test_postgres::database();
    let host = host_on(&db, &[("tasks", TASKS_V1)], GRANT).await;
    let mut writer = host.connect("acme", "tasks").await;
    let mut watcher = host.connect("acme", "tasks").await;
    let total = 200;
    let sending = async {
        for i in 0..total {
            writer
                .send_text(&json!({"op": "add", "title": format!("task {i}")}).to_string())
                .await;
            let added = writer.recv_json().await;
            assert_eq!(added["added"]["title"], format!("task {i}"), "{added}");
            if i == total / 4 {
                host.drop_file("tasks", &plugin_bytes(TASKS_V2));
            }
        }
    };
    sending.await;
    host.wait_generation_above("tasks", 1).await;
    let mut versions = Vec::new();
    for i in 0..total {
        let added = watcher.recv_json().await;
        assert_eq!(added["added"]["title"], format!("task {i}"), "{added}");
        versions.push(added["v"].as_i64().expect("v"));
    }
    assert!(versions.windows(2).all(|w| w[0] <= w[1]), "v1, then v2: {versions:?}");
    eventually("acme runs v2", async || {
        let list = host.http("GET", "/t/acme/tasks", b"").await.json();
        list["v"] == 2
    })
    .await;
    let list = host.http("GET", "/t/acme/tasks", b"").await.json();
    let tasks = list["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), total);
    // import-state ran inside the move's transaction, after the migration.
    assert!(tasks.iter().any(|t| t["priority"] == 1), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_migration_leaves_the_tenant_and_its_schema_as_they_were() {
    let db = baton_test_postgres::database();
    let host = host_on(&db, &[("tasks", TASKS_V1)], GRANT).await;
    for (tenant, title) in [("acme", "short".to_owned()), ("globex", "long ".repeat(50))] {
        let mut client = host.connect(tenant, "tasks").await;
        client
            .send_text(&json!({"op": "add", "title": title}).to_string())
            .await;
        assert!(client.recv_json().await["added"].is_object());
        client.close().await;
    }
    // Columns named `priority` in the schemas of `tenant` (all tenants: "%").
    let columns = |db: &baton_test_postgres::Database, tenant: &str| {
        baton_test_postgres::server()
            .psql(
                &db.name,
                &format!(
                    "SELECT count(*) FROM information_schema.columns c
                     JOIN baton.sql_roles r ON r.role = c.table_schema
                     WHERE r.tenant LIKE '{tenant}' AND c.column_name = 'priority'"
                ),
            )
            .expect("psql")
    };
    // v2's new check fails on globex's long title: globex refuses the move,
    // which withdraws v2 for everyone (see the deployer); globex's schema is
    // as it was, and every tenant serves v1 again, acme on whatever schema
    // it reached (v2's migration is expand-only: v1 runs on it).
    host.drop_file("tasks", &plugin_bytes(TASKS_V2));
    host.wait_generation_above("tasks", 2).await;
    let error = host
        .plugin("tasks")
        .await
        .last_error
        .expect("the withdrawal is reported");
    assert!(error.error.contains("title_length"), "{}", error.error);
    assert_eq!(columns(&db, "globex"), "0", "globex's schema is as it was");
    for tenant in ["acme", "globex"] {
        eventually("the tenant serves v1", async || {
            host.http("GET", &format!("/t/{tenant}/tasks"), b"").await.json()["v"] == 1
        })
        .await;
        let mut client = host.connect(tenant, "tasks").await;
        client.send_text(r#"{"op": "add", "title": "after"}"#).await;
        let added = client.recv_json().await;
        assert_eq!(added["v"], 1, "{added}");
        client.close().await;
    }
    let globex = host.http("GET", "/t/globex/tasks", b"").await.json();
    assert_eq!(globex["tasks"].as_array().map(Vec::len), Some(2), "{globex}");

    // A version whose import-state refuses rolls its migration back too.
    let db = baton_test_postgres::database();
    let host = host_on(&db, &[("tasks", TASKS_V1)], GRANT).await;
    let mut client = host.connect("acme", "tasks").await;
    client
        .send_text(&json!({"op": "add", "title": "stays"}).to_string())
        .await;
    assert!(client.recv_json().await["added"].is_object());
    host.write_settings("tasks", &format!("{GRANT}[config]\nrefuse_import = true\n"));
    host.drop_file("tasks", &plugin_bytes(TASKS_V2));
    host.wait_generation_above("tasks", 1).await;
    eventually("the move was refused", async || {
        host.plugin("tasks")
            .await
            .last_error
            .is_some_and(|e| e.error.contains("refuse"))
    })
    .await;
    assert_eq!(columns(&db, "%"), "0", "the migration was rolled back");
    client.send_text(r#"{"op": "list"}"#).await;
    let list = client.recv_json().await;
    assert_eq!(list["v"], 1, "{list}");
    assert_eq!(list["tasks"][0]["title"], "stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_on_postgres_survives_a_restart_and_fences_a_stale_host() {
    let db = baton_test_postgres::database();
    let first = host_on(&db, &[("chaos", CHAOS)], "").await;
    let mut on_first = first.connect("acme", "chaos").await;
    assert_eq!(on_first.ask("put:k:first").await, "stored");

    // A second host on the same database takes the tenant over: from its
    // first use there, the first host's writes are refused.
    let second = host_on(&db, &[("chaos", CHAOS)], "").await;
    let mut on_second = second.connect("acme", "chaos").await;
    assert_eq!(on_second.ask("get:k").await, "value:first");
    assert_eq!(on_second.ask("put:k:second").await, "stored");
    let stale = on_first.ask("put:k:stale").await;
    assert!(stale.contains("fenced"), "{stale}");
    assert_eq!(on_second.ask("get:k").await, "value:second");
    on_first.close().await;
    on_second.close().await;
    drop(first);
    let frames = second.http("GET", "/t/acme/chaos/events", b"").await.json()["frames"].clone();
    assert_eq!(frames, 3);

    // Restarted, the second host has the data and the plugin's kept state.
    let second = second.restart().await;
    second.wait_current("chaos").await;
    let events = second.http("GET", "/t/acme/chaos/events", b"").await.json();
    assert_eq!(events["frames"], frames, "{events}");
    let mut again = second.connect("acme", "chaos").await;
    assert_eq!(again.ask("get:k").await, "value:second");
}

/// `baton tenant export`, then `delete` (refused while sessions are open,
/// forced), then the tenant starts again empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_is_exported_deleted_and_created_again() {
    let db = baton_test_postgres::database();
    let host = host_on(&db, &[("sql-console", SQL_CONSOLE)], GRANT).await;
    host.write_settings("chaos", "");
    host.drop_file("chaos", &plugin_bytes(CHAOS));
    host.wait_current("chaos").await;
    for tenant in ["acme", "globex"] {
        query(&host, tenant, "CREATE TABLE notes (id integer, body text)")
            .await
            .expect("create");
        run(
            &host,
            tenant,
            "execute",
            &format!("INSERT INTO notes VALUES (1, '{tenant} note')"),
        )
        .await
        .expect("insert");
    }
    let mut session = host.connect("acme", "chaos").await;
    assert_eq!(session.ask("put:plan:gold").await, "stored");
    let admin = format!("http://{}", host.admin);

    let cli = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
                .args(args)
                .env_remove("BATON_ADMIN_TOKEN")
                .output()
                .expect("run baton")
        })
    };
    let out = cli(vec![
        "tenant".into(),
        "export".into(),
        "acme".into(),
        "--admin".into(),
        admin.clone(),
    ])
    .await
    .expect("join");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let export: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(export["format"], "baton-tenant/1");
    let plugins = export["plugins"].as_array().expect("plugins");
    let chaos = plugins.iter().find(|p| p["plugin"] == "chaos").expect("chaos");
    assert_eq!(chaos["keys"], json!([{"key": "plan", "value_base64": "Z29sZA=="}]));
    let console = plugins
        .iter()
        .find(|p| p["plugin"] == "sql-console")
        .expect("sql-console");
    let notes = console["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .find(|t| t["name"] == "notes")
        .expect("notes");
    assert_eq!(notes["rows"], json!([{"id": 1, "body": "acme note"}]));
    assert!(!export.to_string().contains("globex"), "only acme's data");

    // Open sessions: refused unless forced, then they are closed with 1008.
    let delete = |force: bool| {
        let mut args = vec![
            "tenant".into(),
            "delete".into(),
            "acme".into(),
            "--admin".into(),
            admin.clone(),
        ];
        if force {
            args.push("--force".into());
        }
        cli(args)
    };
    let refused = delete(false).await.expect("join");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("open sessions"));
    let forced = delete(true).await.expect("join");
    assert!(forced.status.success(), "{}", String::from_utf8_lossy(&forced.stderr));
    assert_eq!(session.expect_close().await.code, 1008.into());

    // Gone: no schema, no role, no data; globex untouched.
    let roles = baton_test_postgres::server()
        .psql(
            &db.name,
            "SELECT count(*) FROM pg_roles r JOIN baton.sql_roles s ON s.role = r.rolname WHERE s.tenant = 'acme'",
        )
        .expect("psql");
    assert_eq!(roles, "0");
    let export = host.admin_json("/api/tenants/acme/export").await;
    assert_eq!(export["plugins"], json!([]));
    assert_eq!(
        query(&host, "globex", "SELECT body FROM notes").await.expect("globex"),
        json!([["globex note"]])
    );
    // And created again, empty.
    let missing = query(&host, "acme", "SELECT body FROM notes")
        .await
        .expect_err("a new schema");
    assert_eq!(code(&missing), "42P01");
    let mut session = host.connect("acme", "chaos").await;
    assert_eq!(session.ask("get:plan").await, "none");
}
