//! Channels: topics with host fan-out and presence, scoped to the tenant and
//! held by the host across swaps and crashes (chat and chaos plugins).

use baton_test_plugins::{CHAOS, CHAT};

use crate::support::*;

/// Reads frames until one satisfies `pick`, returning it (frames before it,
/// such as presence updates, are skipped).
async fn next_where(client: &mut Client, mut pick: impl FnMut(&serde_json::Value) -> bool) -> serde_json::Value {
    loop {
        let frame = client.recv_json().await;
        if pick(&frame) {
            return frame;
        }
    }
}

fn is_message(text: &str) -> impl FnMut(&serde_json::Value) -> bool + '_ {
    move |f| f["type"] == "message" && f["text"] == text
}

async fn join(host: &TestHost, tenant: &str, room: &str, user: &str) -> Client {
    host.connect_path(&format!("/t/{tenant}/chat?room={room}&user={user}"))
        .await
        .unwrap_or_else(|e| panic!("join refused: {e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_fans_out_to_100_members_of_a_room() {
    let host = TestHost::start(&[("chat", CHAT)]).await;
    let mut members = Vec::new();
    for i in 0..100 {
        members.push(join(&host, "acme", "lobby", &format!("u{i}")).await);
    }
    eventually("all 100 are present", async || {
        host.http("GET", "/t/acme/chat/rooms/lobby/members", b"")
            .await
            .json()
            .as_array()
            .is_some_and(|m| m.len() == 100)
    })
    .await;
    members[0].send_text("hello, everyone").await;
    let mut tasks = Vec::new();
    for mut member in members {
        tasks.push(tokio::spawn(async move {
            let frame = next_where(&mut member, is_message("hello, everyone")).await;
            assert_eq!(frame["user"], "u0");
        }));
    }
    for task in tasks {
        task.await.expect("every member got the message");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_from_excludes_the_sender() {
    let host = TestHost::start(&[("chaos", CHAOS)]).await;
    let mut a = host.connect("acme", "chaos").await;
    let mut b = host.connect("acme", "chaos").await;
    assert_eq!(a.ask("sub:news").await, "subscribed");
    assert_eq!(b.ask("sub:news").await, "subscribed");
    assert_eq!(a.ask("pub-others:news:from a").await, "published:1");
    assert_eq!(b.recv_text().await, "from a");
    // Plain publish reaches the sender too (its copy comes before its answer).
    a.send_text("pub:news:to all").await;
    assert_eq!(a.recv_text().await, "to all");
    assert_eq!(a.recv_text().await, "published:2");
    assert_eq!(b.recv_text().await, "to all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_reports_joins_leaves_and_disconnects() {
    let host = TestHost::start(&[("chat", CHAT)]).await;
    let mut ann = join(&host, "acme", "r", "ann").await;
    let first = next_where(&mut ann, |f| f["type"] == "presence").await;
    assert_eq!(first["joins"], serde_json::json!(["ann"]));

    let mut bob = join(&host, "acme", "r", "bob").await;
    let seen = next_where(&mut ann, |f| f["type"] == "presence").await;
    assert_eq!(
        (seen["joins"].clone(), seen["leaves"].clone()),
        (serde_json::json!(["bob"]), serde_json::json!([]))
    );
    next_where(&mut bob, |f| {
        f["type"] == "presence" && f["joins"] == serde_json::json!(["bob"])
    })
    .await;

    // An explicit leave, staying connected.
    bob.send_text("/leave").await;
    next_where(&mut bob, |f| f["type"] == "left").await;
    let seen = next_where(&mut ann, |f| f["type"] == "presence").await;
    assert_eq!(seen["leaves"], serde_json::json!(["bob"]));

    // A disconnect untracks automatically.
    let carl = join(&host, "acme", "r", "carl").await;
    next_where(&mut ann, |f| {
        f["type"] == "presence" && f["joins"] == serde_json::json!(["carl"])
    })
    .await;
    carl.close().await;
    let seen = next_where(&mut ann, |f| f["type"] == "presence").await;
    assert_eq!(seen["leaves"], serde_json::json!(["carl"]));
    assert_eq!(
        host.http("GET", "/t/acme/chat/rooms/r/members", b"").await.json(),
        serde_json::json!(["ann"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_member_gets_the_history_first() {
    let host = TestHost::start(&[("chat", CHAT)]).await;
    let mut ann = join(&host, "acme", "r", "ann").await;
    for i in 0..55 {
        ann.send_text(&format!("m{i}")).await;
    }
    next_where(&mut ann, is_message("m54")).await;
    eventually("the history is stored", async || {
        host.http("GET", "/t/acme/chat/rooms/r/messages", b"")
            .await
            .json()
            .as_array()
            .is_some_and(|h| h.len() == 50 && h[49]["text"] == "m54")
    })
    .await;
    let mut bob = join(&host, "acme", "r", "bob").await;
    for i in 5..55 {
        let frame = bob.recv_json().await;
        assert_eq!(
            (
                frame["type"].as_str(),
                frame["text"].as_str(),
                frame["history"].as_bool()
            ),
            (Some("message"), Some(format!("m{i}").as_str()), Some(true))
        );
    }
    assert_eq!(bob.recv_json().await["type"], "presence", "then presence");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_and_presence_survive_a_swap_and_a_crash() {
    let host = TestHost::start(&[("chaos", CHAOS)]).await;
    let mut listener = host.connect("acme", "chaos").await;
    let mut speaker = host.connect("acme", "chaos").await;
    assert_eq!(listener.ask("sub:t").await, "subscribed");
    assert_eq!(listener.ask("track:t:listener").await, "tracked");

    let generation = host.wait_current("chaos").await;
    host.drop_file("chaos", &byte_different(&plugin_bytes(CHAOS), 11));
    host.wait_generation_above("chaos", generation).await;
    eventually("the tenant moved", async || {
        host.plugin("chaos")
            .await
            .tenants
            .first()
            .is_some_and(|t| t.generation > generation)
    })
    .await;
    assert_eq!(speaker.ask("pub-others:t:after swap").await, "published:1");
    assert_eq!(listener.recv_text().await, "after swap");
    assert_eq!(speaker.ask("members:t").await, "members:listener");

    speaker.send_text("panic").await;
    assert_eq!(speaker.ask("pub-others:t:after crash").await, "published:1");
    assert_eq!(listener.recv_text().await, "after crash");
    assert_eq!(speaker.ask("members:t").await, "members:listener");
    // The plugin saw the presence changes (a leave, on untrack).
    assert_eq!(listener.ask("untrack:t").await, "untracked");
    assert_eq!(speaker.ask("members:t").await, "members:");
    let events = host.http("GET", "/t/acme/chaos/events", b"").await.json();
    assert_eq!(
        events["presence"]
            .as_array()
            .expect("presence")
            .last()
            .expect("a change"),
        &serde_json::json!(["t", [], ["listener"]])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_never_see_each_others_rooms() {
    let host = TestHost::start(&[("chat", CHAT)]).await;
    let mut alice = join(&host, "acme", "general", "alice").await;
    let mut eve = join(&host, "globex", "general", "eve").await;
    next_where(&mut eve, |f| f["type"] == "presence").await;
    alice.send_text("acme secret").await;
    next_where(&mut alice, is_message("acme secret")).await;
    eve.send_text("globex hello").await;
    // Eve's next frame is her own message: nothing of acme in between.
    let frame = eve.recv_json().await;
    assert_eq!(
        (frame["type"].as_str(), frame["text"].as_str()),
        (Some("message"), Some("globex hello"))
    );
    assert_eq!(
        host.http("GET", "/t/globex/chat/rooms/general/members", b"")
            .await
            .json(),
        serde_json::json!(["eve"])
    );
    let history = host
        .http("GET", "/t/globex/chat/rooms/general/messages", b"")
        .await
        .json();
    assert!(
        history.as_array().expect("history").iter().all(|m| m["user"] == "eve"),
        "{history}"
    );
}
