//! Rebuild when migrations change: `sqlx::migrate!` embeds them at compile
//! time, and cargo does not otherwise notice new files.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
