//! The codec against the specification's test vectors
//! (`docs/protocol-vectors.json`, which the client libraries check too).

use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::*;

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol-vectors.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("the vectors")).expect("JSON")
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

fn token(text: &str) -> Token {
    token_from_text(text).expect("a token")
}

fn frame_of(message: &Value) -> Frame {
    match message["type"].as_str() {
        Some("text") => Frame::Text(message["data"].as_str().expect("data").to_owned()),
        _ => Frame::Binary(hex(message["data_hex"].as_str().expect("data_hex"))),
    }
}

fn bytes_of(message: &Message) -> Vec<u8> {
    match message {
        Message::Binary(bytes) => bytes.to_vec(),
        other => panic!("not binary: {other:?}"),
    }
}

#[test]
fn client_messages_decode_as_the_vectors_say() {
    let vectors = vectors();
    let mut seen = 0;
    for vector in vectors["messages"].as_array().expect("messages") {
        if vector["direction"] != "client" {
            continue;
        }
        let m = &vector["message"];
        let want = match m["type"].as_str().expect("type") {
            "text" | "binary" => FromClient::Data {
                seq: m["seq"].as_u64().expect("seq"),
                ack: m["ack"].as_u64().expect("ack"),
                frame: frame_of(m),
            },
            "ack" => FromClient::Ack(m["ack"].as_u64().expect("ack")),
            "ping" => FromClient::Ping(m["ack"].as_u64().expect("ack")),
            other => panic!("a client message of type {other}"),
        };
        let bytes = hex(vector["hex"].as_str().expect("hex"));
        assert_eq!(decode(&bytes), Ok(want), "{}", vector["name"]);
        seen += 1;
    }
    assert!(seen >= 5);
}

#[test]
fn server_messages_encode_as_the_vectors_say() {
    let vectors = vectors();
    let mut seen = 0;
    for vector in vectors["messages"].as_array().expect("messages") {
        if vector["direction"] != "server" {
            continue;
        }
        let m = &vector["message"];
        let n = |field: &str| m[field].as_u64().expect(field);
        let message = match m["type"].as_str().expect("type") {
            "text" => data(n("seq"), n("ack"), &Message::text(m["data"].as_str().expect("data"))),
            "binary" => data(
                n("seq"),
                n("ack"),
                &Message::binary(hex(m["data_hex"].as_str().expect("data"))),
            ),
            "ack" => ack(n("ack")),
            "pong" => pong(n("ack")),
            "welcome" => welcome(
                n("session"),
                &token(m["token"].as_str().expect("token")),
                n("window_secs") as u32,
            ),
            "resumed" => resumed(
                n("session"),
                &token(m["token"].as_str().expect("token")),
                n("window_secs") as u32,
                n("ack"),
            ),
            "refused" => {
                let refusal = match n("code") {
                    404 => Refusal::Unknown,
                    other => panic!("code {other}"),
                };
                refused(refusal, m["reason"].as_str().expect("reason"))
            }
            "goaway" => goaway(),
            other => panic!("a server message of type {other}"),
        };
        assert_eq!(
            bytes_of(&message),
            hex(vector["hex"].as_str().expect("hex")),
            "{}",
            vector["name"]
        );
        seen += 1;
    }
    assert!(seen >= 8);
}

#[test]
fn invalid_messages_are_violations() {
    for vector in vectors()["invalid"].as_array().expect("invalid") {
        let bytes = hex(vector["hex"].as_str().expect("hex"));
        assert!(decode(&bytes).is_err(), "{}", vector["name"]);
    }
}

#[test]
fn offers_read_as_the_vectors_say() {
    for vector in vectors()["offers"].as_array().expect("offers") {
        let protocols: Vec<&str> = vector["protocols"]
            .as_array()
            .expect("protocols")
            .iter()
            .map(|p| p.as_str().expect("text"))
            .collect();
        let o = &vector["offer"];
        let want = match o["type"].as_str().expect("type") {
            "plain" => Offer::Plain,
            "fresh" => Offer::Fresh,
            "bad_resume" => Offer::BadResume,
            "resume" => Offer::Resume {
                session: o["session"].as_u64().expect("session"),
                token: token(o["token"].as_str().expect("token")),
                received: o["received"].as_u64().expect("received"),
            },
            other => panic!("offer {other}"),
        };
        assert_eq!(Offer::of(protocols.into_iter()), want, "{}", vector["name"]);
    }
}

#[test]
fn tokens_are_random_and_compared_whole() {
    let (a, b) = (new_token(), new_token());
    assert_ne!(a, b);
    assert!(same_token(&a, &a));
    let mut c = a;
    c[15] ^= 1;
    assert!(!same_token(&a, &c));
    assert_eq!(token_from_text(&token_text(&a)), Some(a));
}

#[test]
fn frames_are_taken_once_in_order() {
    let mut state = Continuity::new(Some(goaway()), 4, 0);
    assert_eq!(
        state.take(3, Frame::Text("old".into())),
        Ok(Heard::Nothing),
        "sent again"
    );
    assert_eq!(state.take(4, Frame::Text("old".into())), Ok(Heard::Nothing));
    assert_eq!(
        state.take(5, Frame::Text("new".into())),
        Ok(Heard::Frame(5, Frame::Text("new".into())))
    );
    assert!(state.take(7, Frame::Text("gap".into())).is_err());
}

#[test]
fn acknowledgements_wait_a_little_or_for_enough_frames() {
    let now = Instant::now();
    let mut state = Continuity::new(Some(goaway()), 0, 0);
    state.confirm(1, || now);
    assert_eq!(state.ack_due, Some(now + ACK_DELAY), "not at once");
    assert_eq!(state.written_ack(), 1, "a data frame carried it");
    assert_eq!(state.ack_due, None);
    state.confirm(1 + ACK_EVERY, || now);
    assert_eq!(state.ack_due, Some(now), "many frames: at once");
}
