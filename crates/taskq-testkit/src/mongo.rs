//! The MongoDB wire-protocol server of a test run, and unique names for test data.
//!
//! The testkit does not start MongoDB itself: `scripts/test.sh` starts mongo-java-server
//! (or the CI workflow a real `mongo`) and exports [`MONGODB_URI_ENV`]; every test that
//! needs MongoDB reads it through [`mongo_uri`] and works in its own database named by
//! [`unique_db_name`], so tests can run in parallel against one server.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};

/// Environment variable holding the MongoDB URI the tests use.
pub const MONGODB_URI_ENV: &str = "TASKQ_TEST_MONGODB_URI";

/// Longest name [`unique_db_name`] returns (MongoDB allows 63 bytes).
const MAX_DB_NAME: usize = 60;

/// Default MongoDB port when the URI does not name one.
const DEFAULT_PORT: u16 = 27017;

/// The MongoDB URI of the test run, from `TASKQ_TEST_MONGODB_URI`.
///
/// # Panics
///
/// Panics, saying how to start a server, if the variable is unset or empty.
pub fn mongo_uri() -> String {
    match std::env::var(MONGODB_URI_ENV) {
        Ok(uri) if !uri.trim().is_empty() => uri,
        _ => panic!(
            "{MONGODB_URI_ENV} is not set. Run the tests with `scripts/test.sh`, which starts \
             mongo-java-server and sets it, or start one with `scripts/mongo.sh start` and \
             `export {MONGODB_URI_ENV}=mongodb://127.0.0.1:<port>` (the port it prints)."
        ),
    }
}

/// The socket address of the server in [`mongo_uri`], e.g. the upstream of a
/// [`crate::ChaosProxy`]. IPv4 is preferred when the host resolves to both families.
///
/// # Panics
///
/// Panics if the URI is unset, lists several hosts, uses `mongodb+srv://`, or its host
/// does not resolve.
pub fn mongo_addr() -> SocketAddr {
    let uri = mongo_uri();
    let parts = split_uri(&uri).unwrap_or_else(|e| panic!("{MONGODB_URI_ENV}={uri:?}: {e}"));
    let host_port = if has_port(parts.host) {
        parts.host.to_owned()
    } else {
        format!("{}:{DEFAULT_PORT}", parts.host)
    };
    let addrs: Vec<SocketAddr> = host_port
        .to_socket_addrs()
        .unwrap_or_else(|e| panic!("cannot resolve {host_port} from {MONGODB_URI_ENV}: {e}"))
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .unwrap_or_else(|| panic!("{host_port} from {MONGODB_URI_ENV} resolves to nothing"))
}

/// [`mongo_uri`] with its `host:port` replaced by `addr` (credentials, database and
/// options kept), for connecting through a [`crate::ChaosProxy`].
///
/// `directConnection=true` is added unless the URI sets it, so a driver talking to a
/// replica set does not discover the members' real addresses and bypass the proxy.
///
/// # Panics
///
/// As [`mongo_addr`].
pub fn mongo_uri_via(addr: SocketAddr) -> String {
    let uri = mongo_uri();
    rewrite_host(&uri, addr).unwrap_or_else(|e| panic!("{MONGODB_URI_ENV}={uri:?}: {e}"))
}

/// A database name (or Redis key prefix) unique to this call:
/// `t_<prefix>_<pid>_<counter>_<random>`, at most 60 characters of `[a-z0-9_]`.
///
/// The prefix is lower-cased, other characters become `_`, and it is shortened so the
/// unique part always fits.
pub fn unique_db_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
    let random: u32 = rand::random();
    let suffix = format!("_{}_{counter}_{random:08x}", std::process::id());
    let room = MAX_DB_NAME.saturating_sub("t_".len() + suffix.len());
    let prefix: String = prefix
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '_',
        })
        .take(room)
        .collect();
    if prefix.is_empty() {
        format!("t{suffix}")
    } else {
        format!("t_{prefix}{suffix}")
    }
}

/// A single-host `mongodb://` URI cut into `<scheme+userinfo><host><rest>`.
#[derive(Debug, PartialEq, Eq)]
struct UriParts<'a> {
    /// `mongodb://` plus `user:password@` if present.
    head: &'a str,
    /// `host`, `host:port` or `[v6]:port`.
    host: &'a str,
    /// `/database?options`, possibly empty.
    rest: &'a str,
}

fn split_uri(uri: &str) -> Result<UriParts<'_>, String> {
    const SCHEME: &str = "mongodb://";
    if !uri.starts_with(SCHEME) {
        return Err("only mongodb:// URIs with one host are supported here".to_owned());
    }
    let after_scheme = &uri[SCHEME.len()..];
    let authority_len = after_scheme.find(['/', '?']).unwrap_or(after_scheme.len());
    let authority = &after_scheme[..authority_len];
    let host_start = authority.rfind('@').map_or(0, |i| i + 1);
    let host = &authority[host_start..];
    if host.is_empty() {
        return Err("the URI names no host".to_owned());
    }
    if host.contains(',') {
        return Err("the URI lists several hosts; a proxy can front only one".to_owned());
    }
    Ok(UriParts {
        head: &uri[..SCHEME.len() + host_start],
        host,
        rest: &after_scheme[authority_len..],
    })
}

fn has_port(host: &str) -> bool {
    match host.rfind(']') {
        Some(bracket) => host[bracket..].contains(':'),
        None => host.contains(':'),
    }
}

fn rewrite_host(uri: &str, addr: SocketAddr) -> Result<String, String> {
    let parts = split_uri(uri)?;
    let mut rest = parts.rest.to_owned();
    if !rest.to_ascii_lowercase().contains("directconnection=") {
        if rest.is_empty() {
            rest.push('/');
        }
        rest.push(if rest.contains('?') { '&' } else { '?' });
        rest.push_str("directConnection=true");
    }
    Ok(format!("{}{addr}{rest}", parts.head))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn unique_db_names_are_unique_short_and_clean() {
        let names: BTreeSet<String> = (0..1000).map(|_| unique_db_name("store")).collect();
        assert_eq!(names.len(), 1000);
        let long = "Very Long-Prefix/With.Symbols".repeat(5);
        for name in names.iter().take(3).cloned().chain([
            unique_db_name(&long),
            unique_db_name(""),
            unique_db_name("ÄÖÜ"),
        ]) {
            assert!(name.len() <= MAX_DB_NAME, "{name}");
            assert!(name.starts_with('t'), "{name}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name}"
            );
        }
        assert!(unique_db_name("Api-Test").starts_with("t_api_test_"));
        assert!(unique_db_name(&long).starts_with("t_very_long_prefix_with_symbols"));
    }

    #[test]
    fn splits_single_host_uris() {
        assert_eq!(
            split_uri("mongodb://u:p@db.local:27018/taskq?w=majority"),
            Ok(UriParts {
                head: "mongodb://u:p@",
                host: "db.local:27018",
                rest: "/taskq?w=majority",
            })
        );
        assert_eq!(
            split_uri("mongodb://127.0.0.1"),
            Ok(UriParts {
                head: "mongodb://",
                host: "127.0.0.1",
                rest: "",
            })
        );
        assert!(split_uri("mongodb://a:1,b:2/?replicaSet=rs").is_err());
        assert!(split_uri("mongodb+srv://cluster.example").is_err());
        assert!(split_uri("mongodb:///db").is_err());
        assert!(has_port("[::1]:27017") && !has_port("[::1]") && !has_port("localhost"));
    }

    #[test]
    fn rewrites_the_host_and_keeps_the_rest() {
        let proxy: SocketAddr = "127.0.0.1:4000".parse().expect("addr");
        assert_eq!(
            rewrite_host("mongodb://127.0.0.1:27017", proxy).as_deref(),
            Ok("mongodb://127.0.0.1:4000/?directConnection=true")
        );
        assert_eq!(
            rewrite_host("mongodb://u:p@h:1/db?w=1", proxy).as_deref(),
            Ok("mongodb://u:p@127.0.0.1:4000/db?w=1&directConnection=true")
        );
        assert_eq!(
            rewrite_host("mongodb://h/?directConnection=false", proxy).as_deref(),
            Ok("mongodb://127.0.0.1:4000/?directConnection=false")
        );
    }
}
