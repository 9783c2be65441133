//! Prints a new session signing key: its `kid` and its Ed25519 private key in PKCS#8 PEM.
//!
//! `cargo run -p cadenza-identity --example generate-session-key`

use cadenza_identity::SessionKeyConfig;
use secrecy::ExposeSecret as _;

fn main() {
    let key = SessionKeyConfig::generate();
    println!("kid: {}", key.kid);
    print!("{}", key.private_key_pem.expose_secret());
}
