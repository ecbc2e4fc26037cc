//! Names of containers, pools and snapshots become path components and dataset
//! names, so they are validated once, here.

use crate::error::{BdevError, Result};

pub const MAX_NAME_LEN: usize = 64;

/// Accepts `[A-Za-z0-9_.-]`, 1 to 64 long, not starting with `-` or `.`.
pub fn validate_name(name: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(BdevError::InvalidName {
            name: name.to_owned(),
            reason: reason.to_owned(),
        })
    };
    if name.is_empty() {
        return bad("a name cannot be empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("a name can be at most 64 characters long");
    }
    if name.contains('\0') {
        return bad("a name cannot contain a NUL byte");
    }
    if name.contains('/') {
        return bad("a name cannot contain '/'");
    }
    if name == "." || name.contains("..") {
        return bad("a name cannot be '.' or contain '..'");
    }
    if name.starts_with('-') {
        return bad("a name cannot start with '-' (it would read as an option)");
    }
    if name.starts_with('.') {
        return bad("a name cannot start with '.' (berth keeps its own files there)");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(BdevError::InvalidName {
            name: name.to_owned(),
            reason: format!("{c:?} is not allowed; use letters, digits, '_', '-' and '.'"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names_pass() {
        for n in ["c1", "web-01", "a.b_c", &"x".repeat(64)] {
            validate_name(n).unwrap();
        }
    }

    #[test]
    fn bad_names_say_why() {
        for (n, why) in [
            ("", "empty"),
            ("a/b", "'/'"),
            ("..", ".."),
            ("a..b", ".."),
            ("a\0b", "NUL"),
            ("-rf", "'-'"),
            (".hidden", "'.'"),
            ("sp ace", "not allowed"),
            ("x:y", "not allowed"),
        ] {
            let e = validate_name(n).unwrap_err().to_string();
            assert!(e.contains(why), "{n:?}: {e}");
        }
        let long = "x".repeat(65);
        assert!(validate_name(&long).unwrap_err().to_string().contains("64"));
    }
}
