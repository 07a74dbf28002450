//! Requests between nodes are signed with the cluster secret (`MARKETFLOW_CLUSTER_SECRET`): HMAC-SHA256 over the
//! method, the path, the sending node, a timestamp and the body. A receiver admits a request signed with any value
//! of the secret in force (two during a rotation, `old,new`) within [`SKEW`] of its own clock; anything else is a
//! stranger's request and is refused before it is read.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::Secret;

/// How far a request's timestamp may be from the receiver's clock.
pub const SKEW_MS: i64 = 30_000;

/// The headers a signed request carries.
pub const NODE: &str = "x-marketflow-node";
pub const TIMESTAMP: &str = "x-marketflow-timestamp";
pub const SIGNATURE: &str = "x-marketflow-signature";

fn mac(key: &str, method: &str, path: &str, node: &str, timestamp: i64, body: &[u8]) -> Option<Hmac<Sha256>> {
    let mut m = Hmac::<Sha256>::new_from_slice(key.as_bytes()).ok()?;
    m.update(method.as_bytes());
    m.update(b"\n");
    m.update(path.as_bytes());
    m.update(b"\n");
    m.update(node.as_bytes());
    m.update(b"\n");
    m.update(timestamp.to_string().as_bytes());
    m.update(b"\n");
    m.update(body);
    Some(m)
}

/// The signature of a request, with the first value of the secret (the newest is listed last during a rotation,
/// so nodes sign with the oldest until every node admits the new one).
pub fn sign(secret: &Secret, method: &str, path: &str, node: &str, timestamp: i64, body: &[u8]) -> String {
    let key = secret.values().next().unwrap_or_default();
    mac(key, method, path, node, timestamp, body).map(|m| hex::encode(m.finalize().into_bytes())).unwrap_or_default()
}

/// Why a request between nodes was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the request is not signed")]
    Unsigned,
    #[error("the request's timestamp is too far from this node's clock")]
    Stale,
    #[error("the signature does not match")]
    BadSignature,
}

/// What a signed request says of itself (its headers, method and path).
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub node: &'a str,
    pub timestamp: &'a str,
    pub signature: &'a str,
}

/// Checks a request's signature against every value of the secret, in constant time.
pub fn verify(secret: &Secret, r: &Signed<'_>, body: &[u8], now_ms: i64) -> Result<(), Refused> {
    let ts: i64 = r.timestamp.parse().map_err(|_| Refused::Unsigned)?;
    let given = hex::decode(r.signature).map_err(|_| Refused::Unsigned)?;
    if (now_ms - ts).abs() > SKEW_MS {
        return Err(Refused::Stale);
    }
    let mut ok = false;
    for v in secret.values() {
        if let Some(m) = mac(v, r.method, r.path, r.node, ts, body) {
            ok |= m.verify_slice(&given).is_ok();
        }
    }
    if ok {
        Ok(())
    } else {
        Err(Refused::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_admits_exactly_its_request() {
        let s = Secret::new("a-cluster-secret-of-16+");
        let sig = sign(&s, "POST", "/internal/v1/deliver", "n1", 1_000, b"{}");
        assert_eq!(
            verify(
                &s,
                &Signed {
                    method: "POST",
                    path: "/internal/v1/deliver",
                    node: "n1",
                    timestamp: "1000",
                    signature: &sig
                },
                b"{}",
                1_500
            ),
            Ok(())
        );
        assert_eq!(
            verify(
                &s,
                &Signed {
                    method: "POST",
                    path: "/internal/v1/deliver",
                    node: "n1",
                    timestamp: "1000",
                    signature: &sig
                },
                b"{ }",
                1_500
            ),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            verify(
                &s,
                &Signed {
                    method: "POST",
                    path: "/internal/v1/deliver",
                    node: "n2",
                    timestamp: "1000",
                    signature: &sig
                },
                b"{}",
                1_500
            ),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            verify(
                &s,
                &Signed {
                    method: "POST",
                    path: "/internal/v1/deliver",
                    node: "n1",
                    timestamp: "1000",
                    signature: &sig
                },
                b"{}",
                60_000
            ),
            Err(Refused::Stale)
        );
        assert_eq!(
            verify(
                &s,
                &Signed { method: "POST", path: "/x", node: "n1", timestamp: "zz", signature: &sig },
                b"{}",
                1_000
            ),
            Err(Refused::Unsigned)
        );
        // During a rotation both values are admitted; the old one signs.
        let rotating = Secret::new("a-cluster-secret-of-16+,the-new-secret-of-16+");
        assert_eq!(sign(&rotating, "POST", "/p", "n", 5, b""), sign(&s, "POST", "/p", "n", 5, b""));
        let new_sig = sign(&Secret::new("the-new-secret-of-16+"), "POST", "/p", "n", 5, b"");
        assert_eq!(
            verify(
                &rotating,
                &Signed { method: "POST", path: "/p", node: "n", timestamp: "5", signature: &new_sig },
                b"",
                5
            ),
            Ok(())
        );
        assert_eq!(
            verify(&s, &Signed { method: "POST", path: "/p", node: "n", timestamp: "5", signature: &new_sig }, b"", 5),
            Err(Refused::BadSignature)
        );
    }
}
