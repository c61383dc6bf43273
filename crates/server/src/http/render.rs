//! Rendering siblings: `multipart/mixed` (RFC 2046) or JSON with base64 values.

use axum::http::{HeaderMap, header};
use serde::Serialize;

/// JSON form of a read.
#[derive(Serialize)]
pub(crate) struct SiblingsJson {
    pub siblings: Vec<SiblingJson>,
    pub context: Option<String>,
    pub tombstones: usize,
}

#[derive(Serialize)]
pub(crate) struct SiblingJson {
    /// The value, standard base64.
    pub value: String,
    /// Write time at the coordinator, ms since the Unix epoch.
    pub timestamp: u64,
    /// When the value expires, ms since the Unix epoch (absent: never).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub expires: Option<u64>,
}

pub(crate) fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/json"))
}

/// Encodes sibling values as a `multipart/mixed` body (RFC 2046); returns the boundary and body.
/// The boundary is chosen so that no value contains it.
pub fn multipart(values: &[(&[u8], u64)]) -> (String, Vec<u8>) {
    let mut n = 0u64;
    let boundary = loop {
        let b = format!("dynamokv-siblings-{n}");
        let delim = format!("--{b}");
        if !values
            .iter()
            .any(|(v, _)| v.windows(delim.len()).any(|w| w == delim.as_bytes()))
        {
            break b;
        }
        n += 1;
    };
    let mut body = Vec::new();
    for (i, (value, timestamp)) in values.iter().enumerate() {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Type: application/octet-stream\r\nX-Sibling: {}\r\nX-Timestamp: {timestamp}\r\n\r\n",
                i + 1
            )
            .as_bytes(),
        );
        body.extend_from_slice(value);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (boundary, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_boundary_avoids_values() {
        let v1 = b"--dynamokv-siblings-0 inside".as_slice();
        let (b, body) = multipart(&[(v1, 1), (b"plain", 2)]);
        assert_eq!(b, "dynamokv-siblings-1");
        let text = String::from_utf8_lossy(&body);
        assert_eq!(text.matches("--dynamokv-siblings-1\r\n").count(), 2);
        assert!(text.ends_with("--dynamokv-siblings-1--\r\n"));
    }
}
