//! How numbers arrive over the wire.

use serde::{Deserialize, Deserializer, Serialize};

/// An integer field of a request, checked later against its own range (so that its
/// message names the range, as [`crate::Limits::admit`]'s do). JSON and JSON Schema treat `5.0` and `5` as the same
/// number, so clients that compute with floats may send either; a real fraction (`5.5`)
/// or a value outside `i64` is an error. Serialises as a plain integer; the schema of a
/// field of this type is `integer` (`#[schema(value_type = …)]` beside it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct WireInt(pub i64);

impl<'de> Deserialize<'de> for WireInt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let n = serde_json::Number::deserialize(d)?;
        if let Some(int) = n.as_i64() {
            return Ok(WireInt(int));
        }
        if n.as_u64().is_some() {
            return Err(D::Error::custom(format!(
                "invalid value: {n}, out of range"
            )));
        }
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && (-9.2e18..=9.2e18).contains(f))
            .map(|f| WireInt(f as i64))
            .ok_or_else(|| D::Error::custom(format!("invalid value: {n}, expected an integer")))
    }
}

/// An optional integer field of a narrower type `T` than `WireInt`'s, read as a
/// [`WireInt`]: a value outside `T` is out of range. Use with
/// `#[serde(default, deserialize_with = "...")]`.
pub fn opt_int<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64>,
{
    use serde::de::Error;
    let Some(WireInt(n)) = Option::<WireInt>::deserialize(d)? else {
        return Ok(None);
    };
    T::try_from(n)
        .map(Some)
        .map_err(|_| D::Error::custom(format!("invalid value: {n}, out of range")))
}

impl From<WireInt> for i64 {
    fn from(n: WireInt) -> i64 {
        n.0
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::WireInt;

    #[derive(Debug, Deserialize, PartialEq)]
    struct T {
        n: Option<WireInt>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Narrow {
        #[serde(default, deserialize_with = "super::opt_int")]
        n: Option<u32>,
    }

    fn parse(v: serde_json::Value) -> Result<Option<i64>, String> {
        serde_json::from_value::<T>(v)
            .map(|t| t.n.map(i64::from))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn integers_may_have_a_zero_fraction() {
        assert_eq!(parse(json!({"n": 5})), Ok(Some(5)));
        assert_eq!(parse(json!({"n": -5})), Ok(Some(-5)));
        assert_eq!(parse(json!({"n": 5.0})), Ok(Some(5)));
        assert_eq!(parse(json!({"n": null})), Ok(None));
        assert_eq!(parse(json!({})), Ok(None));
        let err = |v| parse(v).err().unwrap_or_default();
        assert!(err(json!({"n": 5.5})).contains("expected an integer"));
        assert!(err(json!({"n": 1e300})).contains("expected an integer"));
        assert!(err(json!({"n": u64::MAX})).contains("out of range"));
        assert!(err(json!({"n": "5"})).contains("invalid type"));
        // From text too (the api parses bodies from bytes).
        let t: T = serde_json::from_str(r#"{"n": 7.0}"#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.n, Some(WireInt(7)));
        assert_eq!(
            serde_json::to_string(&WireInt(7)).ok().as_deref(),
            Some("7")
        );
    }

    #[test]
    fn a_narrower_integer_is_range_checked() {
        let parse = |v| serde_json::from_value::<Narrow>(v).map_err(|e| e.to_string());
        assert_eq!(parse(json!({"n": 5.0})), Ok(Narrow { n: Some(5) }));
        assert_eq!(parse(json!({})), Ok(Narrow { n: None }));
        assert!(parse(json!({"n": -1})).is_err_and(|e| e.contains("out of range")));
        assert!(parse(json!({"n": 5.5})).is_err_and(|e| e.contains("expected an integer")));
    }
}
