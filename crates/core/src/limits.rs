//! Size rules for keys and values, shared by the HTTP API, the client and storage.

/// The longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// The default largest value accepted, in bytes (1 MiB). Configurable per node.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1024 * 1024;

/// Why a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key has no bytes.
    #[error("the key is empty; keys are 1 to {MAX_KEY_BYTES} bytes")]
    Empty,
    /// The key is longer than [`MAX_KEY_BYTES`].
    #[error("the key is {0} bytes long; keys are 1 to {MAX_KEY_BYTES} bytes")]
    TooLong(usize),
}

/// Checks that a key is 1 to [`MAX_KEY_BYTES`] bytes long.
pub fn check_key(key: &[u8]) -> Result<(), KeyError> {
    match key.len() {
        0 => Err(KeyError::Empty),
        n if n > MAX_KEY_BYTES => Err(KeyError::TooLong(n)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_bounds() {
        assert_eq!(check_key(b""), Err(KeyError::Empty));
        assert!(check_key(b"k").is_ok());
        assert!(check_key(&[0u8; MAX_KEY_BYTES]).is_ok());
        assert_eq!(
            check_key(&[0u8; MAX_KEY_BYTES + 1]),
            Err(KeyError::TooLong(MAX_KEY_BYTES + 1))
        );
    }
}
