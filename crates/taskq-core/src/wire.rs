//! Serde helpers for how numbers arrive over the wire.

use serde::{Deserialize, Deserializer};

/// Deserializes an optional integer that JSON may spell with a zero fraction (`5.0`).
/// JSON and JSON Schema treat `5.0` and `5` as the same number, so clients that compute
/// with floats may send either; a real fraction (`5.5`) or a value outside `T` is an
/// error. Use with `#[serde(default, deserialize_with = "...")]`.
pub fn opt_int<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64>,
{
    use serde::de::Error;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    let int = n.as_i64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && (-9.2e18..=9.2e18).contains(f))
            .map(|f| f as i64)
    });
    let Some(int) = int else {
        return Err(D::Error::custom(format!(
            "invalid value: {n}, expected an integer"
        )));
    };
    T::try_from(int)
        .map(Some)
        .map_err(|_| D::Error::custom(format!("invalid value: {n}, out of range")))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize, PartialEq)]
    struct T {
        #[serde(default, deserialize_with = "super::opt_int")]
        n: Option<u32>,
    }

    fn parse(v: serde_json::Value) -> Result<T, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    #[test]
    fn integers_may_have_a_zero_fraction() {
        assert_eq!(parse(json!({"n": 5})), Ok(T { n: Some(5) }));
        assert_eq!(parse(json!({"n": 5.0})), Ok(T { n: Some(5) }));
        assert_eq!(parse(json!({"n": null})), Ok(T { n: None }));
        assert_eq!(parse(json!({})), Ok(T { n: None }));
        assert!(parse(json!({"n": 5.5})).is_err());
        assert!(parse(json!({"n": -1})).is_err());
        assert!(parse(json!({"n": 1e300})).is_err());
        assert!(parse(json!({"n": u64::MAX})).is_err());
        assert!(parse(json!({"n": "5"})).is_err());
        // From text too (the api parses bodies from bytes).
        let t: T = serde_json::from_str(r#"{"n": 7.0}"#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t, T { n: Some(7) });
    }
}
