//! `sql-console`: runs the SQL it is sent in its tenant's schema and answers
//! with the result or the error, as JSON. A test plugin: the isolation tests
//! send it what a hostile plugin would run. See README.md.

use baton_sdk::sql::{self, Error, Value};
use baton_sdk::{Config, Frame, HttpRequest, HttpResponse, Plugin, Session};
use serde_json::{Value as Json, json};

struct Console;

fn value(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Boolean(b) => json!(b),
        Value::Int64(n) => json!(n),
        Value::Float64(x) => json!(x),
        Value::Text(s) | Value::Json(s) | Value::Uuid(s) | Value::Decimal(s) => json!(s),
        Value::Bytes(b) => json!(b),
        Value::TimestampMs(ms) => json!(ms),
    }
}

fn error(e: &Error) -> Json {
    match e {
        Error::Invalid(why) => json!({"kind": "invalid", "message": why}),
        Error::Db(db) => json!({"kind": "db", "code": db.code, "message": db.message}),
        Error::Timeout => json!({"kind": "timeout"}),
        Error::TooManyRows => json!({"kind": "too-many-rows"}),
        Error::QuotaExceeded => json!({"kind": "quota-exceeded"}),
        Error::Conflict => json!({"kind": "conflict"}),
        Error::Unavailable(why) => json!({"kind": "unavailable", "message": why}),
    }
}

fn answer(result: Result<Json, Error>) -> Result<HttpResponse, String> {
    match result {
        Ok(ok) => HttpResponse::json(200, &json!({ "ok": ok })),
        Err(e) => HttpResponse::json(400, &json!({ "error": error(&e) })),
    }
}

impl Plugin for Console {
    fn init(_config: Config) -> Result<Self, String> {
        Ok(Console)
    }

    /// A text frame is one statement: the answer is `{"ok": rows}` or
    /// `{"error": ...}` (the benchmark's SQL round trip).
    fn on_frame(&mut self, session: Session, frame: Frame) {
        let Frame::Text(text) = frame else { return };
        let answer = match sql::query(&text, &[]) {
            Ok(rows) => {
                let rows: Vec<Vec<Json>> = rows.rows.iter().map(|r| r.iter().map(value).collect()).collect();
                json!({ "ok": rows })
            }
            Err(e) => json!({ "error": error(&e) }),
        };
        let _ = session.send(&Frame::Text(answer.to_string()));
    }

    fn on_http(&mut self, request: HttpRequest) -> Result<HttpResponse, String> {
        let body = String::from_utf8_lossy(&request.body).into_owned();
        match request.path.as_str() {
            // The body is one statement.
            "/query" => answer(sql::query(&body, &[]).map(|rows| {
                let rows: Vec<Vec<Json>> = rows.rows.iter().map(|r| r.iter().map(value).collect()).collect();
                json!(rows)
            })),
            "/execute" => answer(sql::execute(&body, &[]).map(|n| json!(n))),
            // The body is a JSON array of statements.
            "/transaction" => {
                let texts: Vec<String> = serde_json::from_str(&body).map_err(|e| e.to_string())?;
                let statements: Vec<_> = texts.iter().map(|t| sql::statement(t, vec![])).collect();
                answer(sql::transaction(&statements).map(|counts| json!(counts)))
            }
            // `?text=...`: one parameter of every kind the host converts.
            "/echo" => {
                let params = vec![
                    Value::Int64(42),
                    Value::Text(request.query_param("text").unwrap_or("x").to_owned()),
                    Value::Decimal("12345.678".into()),
                    Value::Json(r#"{"a": [1, 2]}"#.into()),
                    Value::Uuid("0b5a4f0e-3c1d-4e8a-9b2f-1a2b3c4d5e6f".into()),
                    Value::TimestampMs(1_700_000_000_123),
                    Value::Bytes(vec![0, 1, 255]),
                    Value::Null,
                ];
                let sql = "SELECT $1::integer, $2::text, $3::numeric, $4::jsonb, $5::uuid, \
                           $6::timestamptz, $7::bytea, $8::text";
                answer(sql::query(sql, &params).map(|rows| {
                    let row: Vec<Json> = rows.rows[0].iter().map(value).collect();
                    json!(row)
                }))
            }
            _ => Ok(HttpResponse::text(
                404,
                "POST /query, /execute, /transaction; GET /echo",
            )),
        }
    }
}

baton_sdk::export!(Console);
