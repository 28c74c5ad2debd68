//! The control plane's REST API end to end: each scenario runs against
//! in-memory SQLite and against a fresh Postgres database.

mod accounts;
mod attachments;
mod conversations;
mod errors;
mod messages;
mod notifications;
mod own_data;
mod search;

/// A PNG of `width` × `height` with a gradient (so it does not compress to
/// nothing) and blue channel `shade`.
pub(crate) fn png(width: u32, height: u32, shade: u8) -> Vec<u8> {
    let picture = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 7 % 256) as u8, (y * 3 % 256) as u8, shade])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    picture.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}
