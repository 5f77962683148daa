//! Between the WIT `value` and PostgreSQL's binary format: a parameter takes
//! the type PostgreSQL inferred for its `$n` (an `int64` fits an `integer`
//! column if it is in range), and a column becomes the `value` its type maps
//! to. A type `value` cannot hold is an `invalid` error that says to cast.

use std::error::Error;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, BytesMut};
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

pub use crate::bindings::baton::plugin::sql::Value;

type BoxError = Box<dyn Error + Sync + Send>;

fn mismatch(value: &Value, ty: &Type) -> BoxError {
    format!("a {} value cannot be a {} parameter", value.kind(), ty.name()).into()
}

impl Value {
    /// The WIT case name, for errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Boolean(_) => "boolean",
            Value::Int64(_) => "int64",
            Value::Float64(_) => "float64",
            Value::Text(_) => "text",
            Value::Bytes(_) => "bytes",
            Value::Json(_) => "json",
            Value::TimestampMs(_) => "timestamp-ms",
            Value::Uuid(_) => "uuid",
            Value::Decimal(_) => "decimal",
        }
    }

    /// Bytes this value takes in a result (for the result byte limit).
    pub fn size(&self) -> usize {
        match self {
            Value::Text(s) | Value::Json(s) | Value::Uuid(s) | Value::Decimal(s) => s.len(),
            Value::Bytes(b) => b.len(),
            _ => 8,
        }
    }
}

impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match (self, ty) {
            (Value::Null, _) => Ok(IsNull::Yes),
            (Value::Boolean(b), &Type::BOOL) => b.to_sql(ty, out),
            (Value::Int64(n), &Type::INT2) => i16::try_from(*n)
                .map_err(|_| format!("{n} is out of range for smallint"))?
                .to_sql(ty, out),
            (Value::Int64(n), &Type::INT4) => i32::try_from(*n)
                .map_err(|_| format!("{n} is out of range for integer"))?
                .to_sql(ty, out),
            (Value::Int64(n), &Type::INT8) => n.to_sql(ty, out),
            (Value::Int64(n), &Type::FLOAT8) => (*n as f64).to_sql(ty, out),
            (Value::Int64(n), &Type::NUMERIC) => encode_numeric(&n.to_string(), out),
            (Value::Float64(x), &Type::FLOAT8) => x.to_sql(ty, out),
            (Value::Float64(x), &Type::FLOAT4) => (*x as f32).to_sql(ty, out),
            (Value::Text(s), &Type::TEXT | &Type::VARCHAR | &Type::BPCHAR | &Type::NAME | &Type::UNKNOWN) => {
                s.as_str().to_sql(ty, out)
            }
            (Value::Text(s) | Value::Json(s), &Type::JSON) => raw(out, &[], s.as_bytes()),
            (Value::Text(s) | Value::Json(s), &Type::JSONB) => raw(out, &[1], s.as_bytes()),
            (Value::Json(s), &Type::TEXT | &Type::VARCHAR) => s.as_str().to_sql(ty, out),
            (Value::Bytes(b), &Type::BYTEA) => b.as_slice().to_sql(ty, out),
            (Value::TimestampMs(ms), &Type::TIMESTAMP | &Type::TIMESTAMPTZ) => {
                let at = if *ms >= 0 {
                    UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs())
                } else {
                    UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
                };
                at.to_sql(ty, out)
            }
            (Value::Uuid(s) | Value::Text(s), &Type::UUID) => raw(out, &[], &parse_uuid(s)?),
            (Value::Decimal(s) | Value::Text(s), &Type::NUMERIC) => encode_numeric(s, out),
            (value, ty) => Err(mismatch(value, ty)),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for Value {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Value, BoxError> {
        Ok(match *ty {
            Type::BOOL => Value::Boolean(bool::from_sql(ty, raw)?),
            Type::INT2 => Value::Int64(i16::from_sql(ty, raw)?.into()),
            Type::INT4 => Value::Int64(i32::from_sql(ty, raw)?.into()),
            Type::INT8 => Value::Int64(i64::from_sql(ty, raw)?),
            Type::OID => Value::Int64(u32::from_sql(ty, raw)?.into()),
            Type::FLOAT4 => Value::Float64(f32::from_sql(ty, raw)?.into()),
            Type::FLOAT8 => Value::Float64(f64::from_sql(ty, raw)?),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                Value::Text(String::from_sql(ty, raw)?)
            }
            Type::BYTEA => Value::Bytes(raw.to_vec()),
            Type::JSON => Value::Json(std::str::from_utf8(raw)?.to_owned()),
            Type::JSONB => match raw.split_first() {
                Some((1, json)) => Value::Json(std::str::from_utf8(json)?.to_owned()),
                _ => return Err("unknown jsonb format".into()),
            },
            Type::TIMESTAMP | Type::TIMESTAMPTZ => {
                let at = SystemTime::from_sql(ty, raw)?;
                Value::TimestampMs(match at.duration_since(UNIX_EPOCH) {
                    Ok(after) => after.as_millis() as i64,
                    Err(before) => -(before.duration().as_millis() as i64),
                })
            }
            Type::UUID => Value::Uuid(format_uuid(raw)?),
            Type::NUMERIC => Value::Decimal(decode_numeric(raw)?),
            ref other => {
                return Err(format!(
                    "a column of type {} cannot be returned: cast it, e.g. to text",
                    other.name()
                )
                .into());
            }
        })
    }

    fn from_sql_null(_: &Type) -> Result<Value, BoxError> {
        Ok(Value::Null)
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Writes `prefix` and `bytes` as the value.
fn raw(out: &mut BytesMut, prefix: &[u8], bytes: &[u8]) -> Result<IsNull, BoxError> {
    out.put_slice(prefix);
    out.put_slice(bytes);
    Ok(IsNull::No)
}

fn parse_uuid(s: &str) -> Result<[u8; 16], BoxError> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return Err(format!("{s:?} is not a UUID").into());
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| format!("{s:?} is not a UUID"))?;
    }
    Ok(out)
}

fn format_uuid(raw: &[u8]) -> Result<String, BoxError> {
    if raw.len() != 16 {
        return Err("a uuid has 16 bytes".into());
    }
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    ))
}

const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;

/// `numeric`'s binary format: base-10,000 digits with a weight (the power
/// of 10,000 of the first digit), a sign and the count of decimal places.
fn encode_numeric(text: &str, out: &mut BytesMut) -> Result<IsNull, BoxError> {
    let bad = || -> BoxError { format!("{text:?} is not a decimal number").into() };
    let s = text.trim();
    if s.eq_ignore_ascii_case("nan") {
        for part in [0u16, 0, NUMERIC_NAN, 0] {
            out.put_u16(part);
        }
        return Ok(IsNull::No);
    }
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() && frac.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let int = int.trim_start_matches('0');
    // Pad the integer part on the left and the fraction on the right to
    // whole groups of four digits.
    let int_pad = (4 - int.len() % 4) % 4;
    let frac_pad = (4 - frac.len() % 4) % 4;
    let digits: String = "0".repeat(int_pad) + int + frac + &"0".repeat(frac_pad);
    let mut groups: Vec<u16> = digits
        .as_bytes()
        .chunks(4)
        .map(|c| {
            std::str::from_utf8(c)
                .map_err(|_| bad())?
                .parse::<u16>()
                .map_err(|_| bad())
        })
        .collect::<Result<_, _>>()?;
    let mut weight = ((int.len() + int_pad) / 4) as i32 - 1;
    while groups.first() == Some(&0) {
        groups.remove(0);
        weight -= 1;
    }
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    let count = u16::try_from(groups.len()).map_err(|_| bad())?;
    out.put_u16(count);
    out.put_i16(i16::try_from(weight).map_err(|_| bad())?);
    out.put_u16(if negative && !groups.is_empty() { NUMERIC_NEG } else { 0 });
    out.put_u16(u16::try_from(frac.len()).map_err(|_| bad())?);
    for group in groups {
        out.put_u16(group);
    }
    Ok(IsNull::No)
}

fn decode_numeric(raw: &[u8]) -> Result<String, BoxError> {
    let word = |i: usize| -> Result<u16, BoxError> {
        raw.get(2 * i..2 * i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "short numeric".into())
    };
    let (count, weight, sign, scale) = (word(0)? as usize, word(1)? as i16 as i32, word(2)?, word(3)? as usize);
    if sign == NUMERIC_NAN {
        return Ok("NaN".into());
    }
    let groups: Vec<u16> = (0..count).map(|i| word(4 + i)).collect::<Result<_, _>>()?;
    let group = |power: i32| -> u16 {
        // The group of 10,000^power.
        let index = weight - power;
        if index < 0 {
            0
        } else {
            groups.get(index as usize).copied().unwrap_or(0)
        }
    };
    let mut int = String::new();
    for power in (0..=weight.max(0)).rev() {
        int.push_str(&format!("{:04}", group(power)));
    }
    let int = int.trim_start_matches('0');
    let mut frac = String::new();
    let mut power = -1;
    while frac.len() < scale {
        frac.push_str(&format!("{:04}", group(power)));
        power -= 1;
    }
    frac.truncate(scale);
    let mut text = String::new();
    if sign == NUMERIC_NEG {
        text.push('-');
    }
    text.push_str(if int.is_empty() { "0" } else { int });
    if scale > 0 {
        text.push('.');
        text.push_str(&frac);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numerics_round_trip() {
        for text in [
            "0",
            "1",
            "-1",
            "12345.678",
            "0.0001",
            "-0.5",
            "10000",
            "99990000.00010",
            "NaN",
        ] {
            let mut out = BytesMut::new();
            encode_numeric(text, &mut out).expect(text);
            assert_eq!(decode_numeric(&out).expect(text), text, "{text}");
        }
        let mut out = BytesMut::new();
        assert!(encode_numeric("1e5", &mut out).is_err());
        assert!(encode_numeric("", &mut out).is_err());
    }

    #[test]
    fn uuids_round_trip() {
        let text = "0b5a4f0e-3c1d-4e8a-9b2f-1a2b3c4d5e6f";
        assert_eq!(format_uuid(&parse_uuid(text).expect("parse")).expect("format"), text);
        assert!(parse_uuid("not-a-uuid").is_err());
    }
}
