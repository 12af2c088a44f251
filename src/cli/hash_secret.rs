//! `incode-gateway hash-secret`: prints an argon2id PHC string of a client secret.
//!
//! The secret is read from standard input (or prompted for twice, without echo, on a terminal),
//! never from the command line, so that it stays out of the shell history and the process list.

use std::io::{self, IsTerminal, Read, Write};

use incode_gateway::auth::{Secret, hash_secret};

/// Why `hash-secret` failed.
#[derive(Debug, thiserror::Error)]
pub enum HashSecretError {
    /// Standard input or the terminal could not be read.
    #[error("cannot read the secret")]
    Read(#[source] io::Error),
    /// The secret is empty.
    #[error("the secret is empty")]
    Empty,
    /// The two entries on the terminal differ.
    #[error("the two entries differ")]
    Mismatch,
    /// Hashing failed.
    #[error("cannot hash the secret")]
    Hash(#[source] argon2::password_hash::Error),
    /// The hash could not be written.
    #[error("cannot write the hash")]
    Write(#[source] io::Error),
}

/// Reads a secret from standard input or the terminal and prints its hash on standard output.
pub fn main() -> Result<(), HashSecretError> {
    let stdin = io::stdin();
    let secret = if stdin.is_terminal() {
        let first = Secret::new(
            rpassword::prompt_password("Client secret: ").map_err(HashSecretError::Read)?,
        );
        let second =
            Secret::new(rpassword::prompt_password("Same again: ").map_err(HashSecretError::Read)?);
        if first != second {
            return Err(HashSecretError::Mismatch);
        }
        first
    } else {
        read_secret(stdin.lock())?
    };
    let hash = hash_secret(secret.expose()).map_err(HashSecretError::Hash)?;
    writeln!(io::stdout().lock(), "{hash}").map_err(HashSecretError::Write)
}

/// The secret in `input`, without one trailing line break (`echo` adds one).
fn read_secret(mut input: impl Read) -> Result<Secret, HashSecretError> {
    let mut text = String::new();
    input
        .read_to_string(&mut text)
        .map_err(HashSecretError::Read)?;
    let mut secret = Secret::new(text);
    let trimmed = secret
        .expose()
        .strip_suffix('\n')
        .map(|s| s.strip_suffix('\r').unwrap_or(s));
    if let Some(trimmed) = trimmed {
        secret = Secret::new(trimmed);
    }
    if secret.is_empty() {
        return Err(HashSecretError::Empty);
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_trailing_line_break_is_dropped() {
        for (input, expected) in [
            ("s3cret\n", "s3cret"),
            ("s3cret\r\n", "s3cret"),
            ("s3cret", "s3cret"),
            (" s3cret \n\n", " s3cret \n"),
        ] {
            assert_eq!(read_secret(input.as_bytes()).unwrap().expose(), expected);
        }
        assert!(matches!(
            read_secret(&b"\n"[..]),
            Err(HashSecretError::Empty)
        ));
    }
}
