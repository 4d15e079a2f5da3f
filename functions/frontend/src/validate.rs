//! Validation of `POST /order` bodies: pure, and precise about which field is wrong.

use serde::Serialize;
use serde_json::{Map, Value};

pub const MAX_BODY_BYTES: usize = 16 * 1024;
pub const MAX_QUANTITY: u64 = 1_000_000;
pub const MAX_NAME_LEN: usize = 64;
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// The original design's fault switch, accepted only while fault injection is on.
pub const PAYMENT_ERROR_FIELD: &str = "payment-error";

/// One thing wrong with one field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// What a `POST /order` body asks for. `user` may be left out when the caller is signed in:
/// then the order is theirs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRequest {
    pub item: String,
    pub quantity: u32,
    pub user: Option<String>,
    pub payment_error: bool,
}

/// Everything wrong with a request body, or the order it asks for.
pub fn order(body: &[u8], fault_injection: bool) -> Result<OrderRequest, Vec<FieldError>> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| vec![FieldError::new("body", format!("is not valid JSON: {e}"))])?;
    let Value::Object(fields) = value else {
        return Err(vec![FieldError::new("body", "must be a JSON object")]);
    };
    let mut errors = Vec::new();
    for key in fields.keys() {
        let known = matches!(key.as_str(), "item" | "quantity" | "user");
        let fault = key == PAYMENT_ERROR_FIELD;
        if fault && !fault_injection {
            errors.push(FieldError::new(
                key,
                "is a fault switch, accepted only when fault injection is on",
            ));
        } else if !known && !fault {
            errors.push(FieldError::new(key, "is not a known field"));
        }
    }
    let item = name(&fields, "item", &mut errors);
    let user = fields
        .contains_key("user")
        .then(|| name(&fields, "user", &mut errors))
        .flatten();
    let quantity = quantity(&fields, &mut errors);
    match (item, quantity) {
        (Some(item), Some(quantity)) if errors.is_empty() => Ok(OrderRequest {
            item,
            quantity,
            user,
            payment_error: fault_injection && fields.contains_key(PAYMENT_ERROR_FIELD),
        }),
        _ => Err(errors),
    }
}

/// An item or user name: also a Firestore document id, so a safe, short alphabet.
fn name(fields: &Map<String, Value>, field: &str, errors: &mut Vec<FieldError>) -> Option<String> {
    let message = match fields.get(field) {
        None => "is required",
        Some(Value::String(s)) if s.is_empty() => "must not be empty",
        Some(Value::String(s)) if s.chars().count() > MAX_NAME_LEN => {
            "must be at most 64 characters"
        }
        Some(Value::String(s))
            if !s.starts_with(|c: char| c.is_ascii_alphanumeric())
                || !s
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) =>
        {
            "must start with a letter or digit and contain only letters, digits, '-', '_' and '.'"
        }
        Some(Value::String(s)) => return Some(s.clone()),
        Some(_) => "must be a string",
    };
    errors.push(FieldError::new(field, message));
    None
}

fn quantity(fields: &Map<String, Value>, errors: &mut Vec<FieldError>) -> Option<u32> {
    let message = match fields.get("quantity") {
        None => "is required".to_owned(),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_i64()) {
            (Some(0), _) => "must be at least 1".to_owned(),
            (Some(q), _) if q > MAX_QUANTITY => format!("must be at most {MAX_QUANTITY}"),
            (Some(q), _) => return u32::try_from(q).ok(),
            (None, Some(_)) => "must be at least 1".to_owned(),
            (None, None) => "must be a whole number".to_owned(),
        },
        Some(_) => "must be a number".to_owned(),
    };
    errors.push(FieldError::new("quantity", message));
    None
}

/// The `Idempotency-Key` header: 1 to 255 visible ASCII characters.
///
/// Besides its length and characters, a key must be usable as a Firestore document id, so a
/// key the store would refuse is answered 400 here, not 503 (a retry would fail forever):
/// no `/`, not `.` or `..`, not `__...__` (Firestore, "Limits": document ids).
pub fn idempotency_key(value: &[u8]) -> Result<String, FieldError> {
    let valid = !value.is_empty()
        && value.len() <= MAX_IDEMPOTENCY_KEY_LEN
        && value.iter().all(|b| b.is_ascii_graphic());
    let key = match std::str::from_utf8(value) {
        Ok(key) if valid => key,
        _ => {
            return Err(FieldError::new(
                "Idempotency-Key",
                "must be 1 to 255 visible ASCII characters",
            ));
        }
    };
    let reserved = key.len() >= 4 && key.starts_with("__") && key.ends_with("__");
    if key.contains('/') || key == "." || key == ".." || reserved {
        return Err(FieldError::new(
            "Idempotency-Key",
            "must not contain '/', be '.' or '..', or start and end with '__'",
        ));
    }
    Ok(key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(body: &str) -> Vec<FieldError> {
        order(body.as_bytes(), false).unwrap_err()
    }

    fn fields(body: &str) -> Vec<String> {
        errors(body).into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn a_good_order_is_accepted() {
        let o = order(br#"{"item":"widget","quantity":5,"user":"jack"}"#, false).unwrap();
        assert_eq!(
            (o.item.as_str(), o.quantity, o.user.as_deref()),
            ("widget", 5, Some("jack"))
        );
        assert!(!o.payment_error);
    }

    #[test]
    fn malformed_json_and_non_objects_name_the_body() {
        assert_eq!(fields("{"), ["body"]);
        assert_eq!(fields("[1,2]"), ["body"]);
        assert_eq!(fields("\"order\""), ["body"]);
    }

    #[test]
    fn missing_and_mistyped_fields_are_each_named() {
        // A missing `user` is not the body's error: signed in, the caller is the user;
        // signed out, `POST /order` names it (orders.rs).
        assert_eq!(fields("{}"), ["item", "quantity"]);
        assert_eq!(
            fields(r#"{"item":5,"quantity":"5","user":null}"#),
            ["item", "user", "quantity"]
        );
        let e = errors(r#"{"item":"widget","quantity":1.5,"user":"jack"}"#);
        assert_eq!(e[0].message, "must be a whole number");
    }

    #[test]
    fn quantities_out_of_range_are_rejected() {
        for q in ["0", "-3", "1000001", "18446744073709551616", "1e30"] {
            let body = format!(r#"{{"item":"widget","quantity":{q},"user":"jack"}}"#);
            assert_eq!(fields(&body), ["quantity"], "quantity {q}");
        }
        let big = br#"{"item":"wotsit","quantity":500000,"user":"jill"}"#;
        assert!(
            order(big, false).is_ok(),
            "the original design's stock failure example"
        );
    }

    #[test]
    fn names_must_be_non_empty_short_and_safe_document_ids() {
        for bad in ["", "a/b", "..", "__x__", &"x".repeat(65), "sp ace"] {
            let body = serde_json::json!({"item": bad, "quantity": 1, "user": "jack"});
            assert_eq!(fields(&body.to_string()), ["item"], "item {bad:?}");
        }
    }

    #[test]
    fn unknown_fields_are_named_and_the_fault_switch_needs_fault_injection() {
        let body = r#"{"item":"wotsit","quantity":80,"user":"jill","colour":"red"}"#;
        assert_eq!(fields(body), ["colour"]);
        let body = br#"{"item":"wotsit","quantity":80,"user":"jill","payment-error":"null"}"#;
        assert_eq!(order(body, false).unwrap_err()[0].field, "payment-error");
        assert!(order(body, true).unwrap().payment_error);
    }

    #[test]
    fn idempotency_keys_are_bounded_visible_ascii() {
        assert_eq!(idempotency_key(b"abc-123").unwrap(), "abc-123");
        for bad in [&b""[..], b"has space", "é".as_bytes(), &[b'k'; 256]] {
            assert!(idempotency_key(bad).is_err());
        }
    }

    #[test]
    fn idempotency_keys_firestore_cannot_use_as_an_id_are_refused() {
        for bad in ["a/b", "/", ".", "..", "__x__", "____"] {
            let e = idempotency_key(bad.as_bytes()).unwrap_err();
            assert_eq!(e.field, "Idempotency-Key", "{bad}");
        }
        for good in ["...", "_x_", "__x", "x__", "a.b", "__"] {
            assert!(idempotency_key(good.as_bytes()).is_ok(), "{good}");
        }
    }
}
