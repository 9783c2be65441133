//! Prints a new key-encryption key: its id and 32 random bytes in base64, as an entry of a key
//! spec and of a key file.
//!
//! `cargo run -p cadenza-crypto --example generate-kek`

use cadenza_crypto::KeyRing;
use secrecy::ExposeSecret as _;

fn main() -> Result<(), cadenza_crypto::Error> {
    let (id, key) = KeyRing::generate_key()?;
    let key = key.expose_secret();
    println!("id:  {id}");
    println!("key: {key}");
    println!();
    println!("key spec entry: {id}:{key}");
    println!("key file entry: {{\"id\": \"{id}\", \"key\": \"{key}\"}}");
    Ok(())
}
