//! Strict JSON decoding for input from outside.
//!
//! serde's derived decoders are lenient in two ways an attacker can use:
//! a struct also decodes from a JSON array of its fields in order
//! (`["devA","192.0.2.7:1"]` as a registration), and an enum's tag also
//! decodes from the variant's index (`{"cmd":3}` as `reload`). Neither is the
//! documented format, so meshd refuses both: [`from_slice`] decodes as usual,
//! encodes the result again, and requires the input to have the same shape
//! as that canonical form wherever both have a value: objects where it has
//! objects, strings where it has strings, and so on. Keys the type does not
//! know are left to the type (ignored, or refused by `deny_unknown_fields`).

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Why a document was refused.
#[derive(Debug, thiserror::Error)]
pub enum StrictError {
    /// Not JSON, or JSON that does not decode into the type.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// JSON of another shape than the documented one.
    #[error("at {path}: expected {expected}, found {found}")]
    Shape {
        /// Where, as `$.field[index]`.
        path: String,
        /// The JSON type the format has there.
        expected: &'static str,
        /// The JSON type the input has.
        found: &'static str,
    },
}

/// Decodes a JSON document that must be an object of exactly the documented
/// shape (see the module docs).
pub fn from_slice<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Result<T, StrictError> {
    let input: Value = serde_json::from_slice(bytes)?;
    if !input.is_object() {
        return Err(StrictError::Shape {
            path: "$".to_owned(),
            expected: "an object",
            found: kind(&input),
        });
    }
    let decoded = T::deserialize(&input)?;
    let canonical = serde_json::to_value(&decoded)?;
    check_shape(&input, &canonical, &mut "$".to_owned())?;
    Ok(decoded)
}

fn check_shape(input: &Value, canonical: &Value, path: &mut String) -> Result<(), StrictError> {
    let mismatch = |path: &str| StrictError::Shape {
        path: path.to_owned(),
        expected: kind(canonical),
        found: kind(input),
    };
    match (input, canonical) {
        (Value::Object(fields), Value::Object(known)) => {
            for (key, value) in fields {
                if let Some(expected) = known.get(key) {
                    let len = path.len();
                    path.push('.');
                    path.push_str(key);
                    check_shape(value, expected, path)?;
                    path.truncate(len);
                }
            }
            Ok(())
        }
        (Value::Array(items), Value::Array(expected)) if items.len() == expected.len() => {
            for (index, (item, expected)) in items.iter().zip(expected).enumerate() {
                let len = path.len();
                path.push_str(&format!("[{index}]"));
                check_shape(item, expected, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        (Value::String(_), Value::String(_))
        | (Value::Number(_), Value::Number(_))
        | (Value::Bool(_), Value::Bool(_))
        | (Value::Null, Value::Null) => Ok(()),
        _ => Err(mismatch(path)),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Register {
        id: String,
        addr: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoints: Option<Vec<String>>,
        #[serde(default)]
        inner: Option<Inner>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Inner {
        n: u64,
    }

    /// The control protocol's shape: an envelope with the command flattened.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Frame {
        id: u64,
        #[serde(flatten)]
        command: Command,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "cmd", rename_all = "snake_case")]
    enum Command {
        Status,
        Reload,
        Send { to: String },
    }

    #[test]
    fn the_documented_form_decodes() {
        let register: Register = from_slice(
            br#"{"id":"a","addr":"192.0.2.7:1","endpoints":["x"],"inner":{"n":1},"extra":[1]}"#,
        )
        .unwrap();
        assert_eq!(register.endpoints, Some(vec!["x".to_owned()]));
        let minimal: Register = from_slice(br#"{"id":"a","addr":"b","inner":null}"#).unwrap();
        assert_eq!(minimal.inner, None);
        assert_eq!(
            from_slice::<Frame>(br#"{"id":1,"cmd":"send","to":"b"}"#).unwrap(),
            Frame {
                id: 1,
                command: Command::Send { to: "b".into() }
            }
        );
    }

    #[test]
    fn arrays_for_structs_are_refused_at_any_depth() {
        // serde alone accepts all of these.
        assert!(serde_json::from_slice::<Register>(br#"["devA","192.0.2.7:1"]"#).is_ok());
        let error = from_slice::<Register>(br#"["devA","192.0.2.7:1"]"#).unwrap_err();
        assert_eq!(
            error.to_string(),
            "at $: expected an object, found an array"
        );
        let error = from_slice::<Register>(br#"{"id":"a","addr":"b","inner":[1]}"#).unwrap_err();
        assert_eq!(
            error.to_string(),
            "at $.inner: expected an object, found an array"
        );
        for other in [&b"1"[..], b"\"x\"", b"null", b"true"] {
            assert!(from_slice::<Register>(other).is_err());
        }
    }

    #[test]
    fn enum_indexes_are_refused() {
        // Flattened, serde alone takes the index 1 for `reload`.
        assert_eq!(
            serde_json::from_slice::<Frame>(br#"{"id":1,"cmd":1}"#).unwrap(),
            Frame {
                id: 1,
                command: Command::Reload
            }
        );
        let error = from_slice::<Frame>(br#"{"id":1,"cmd":1}"#).unwrap_err();
        assert_eq!(
            error.to_string(),
            "at $.cmd: expected a string, found a number"
        );
        assert!(from_slice::<Command>(br#"{"cmd":1}"#).is_err());
    }
}
