//! Rules every resource and flag name must follow, whatever the backend.

use crate::LockError;

/// The longest accepted resource or flag name, in bytes.
pub const MAX_NAME_LEN: usize = 1024;

/// Checks the rules shared by all backends: not empty, at most
/// [`MAX_NAME_LEN`] bytes, no NUL. Anything else — slashes, `..`, unicode,
/// names differing only in case — is a distinct, valid name; backends that
/// store names in files or keys must encode them injectively.
///
/// ```
/// use lockman_core::validate_name;
/// assert!(validate_name("../../etc/passwd").is_ok());
/// assert!(validate_name("").is_err());
/// assert!(validate_name("a\0b").is_err());
/// ```
///
/// # Errors
///
/// [`LockError::InvalidName`] saying which rule was broken.
pub fn validate_name(name: &str) -> Result<(), LockError> {
    if name.is_empty() {
        return Err(LockError::invalid_name(name, "names must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        let shown: String = name.chars().take(32).collect();
        return Err(LockError::invalid_name(
            &format!("{shown}…"),
            format!("names are at most {MAX_NAME_LEN} bytes, this one has {}", name.len()),
        ));
    }
    if name.contains('\0') {
        return Err(LockError::invalid_name(name, "names must not contain NUL bytes"));
    }
    Ok(())
}
