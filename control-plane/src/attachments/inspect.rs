//! What an upload really is, from its bytes (sans-IO): the content type is
//! sniffed, never trusted from the client; a name or declared type that
//! claims something else is refused; images are decoded (dimensions, a
//! thumbnail) under allocation limits; voice messages get their duration.

use std::io::Cursor;

/// What a message attaches.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AttachmentKind {
    /// A picture shown inline (PNG, JPEG, GIF, WebP).
    Image,
    /// Any file, offered for download.
    File,
    /// A recorded voice message (Ogg/Opus, WebM/Opus or MP4/AAC).
    Voice,
}

impl AttachmentKind {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AttachmentKind::Image => "image",
            AttachmentKind::File => "file",
            AttachmentKind::Voice => "voice",
        }
    }

    /// From the stored spelling.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "image" => Some(AttachmentKind::Image),
            "file" => Some(AttachmentKind::File),
            "voice" => Some(AttachmentKind::Voice),
            _ => None,
        }
    }
}

/// Why an upload is refused (each a 422 with its code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The bytes are not what the name or declared type says.
    #[error("the file's content is {found}, but it is presented as {claimed}")]
    ContentMismatch {
        /// What the name or the declared type says.
        claimed: String,
        /// What the bytes are.
        found: String,
    },
    /// An image upload that is no image we accept, or does not decode.
    #[error("not an image this service shows (PNG, JPEG, GIF or WebP): {0}")]
    NotAnImage(String),
    /// A voice upload that is not Ogg, WebM or MP4 audio.
    #[error("not a voice recording (Ogg/Opus, WebM or MP4 audio): {0}")]
    NotAudio(String),
    /// Empty.
    #[error("the file is empty")]
    Empty,
}

impl Refusal {
    /// The error code clients see.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::ContentMismatch { .. } => "content_mismatch",
            Refusal::NotAnImage(_) => "not_an_image",
            Refusal::NotAudio(_) => "not_audio",
            Refusal::Empty => "empty_file",
        }
    }
}

/// What was found in an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspected {
    /// The sniffed content type (from an allowlist; anything else is
    /// `application/octet-stream`).
    pub content_type: &'static str,
    /// Image dimensions.
    pub width: Option<u32>,
    /// Image dimensions.
    pub height: Option<u32>,
    /// Voice duration.
    pub duration_ms: Option<u64>,
    /// A small JPEG or PNG preview of an image (longest side ≤ 320 px).
    pub thumbnail: Option<(Vec<u8>, &'static str)>,
}

/// Longest side of a thumbnail, in pixels.
pub const THUMBNAIL_SIDE: u32 = 320;
/// What decoding one image may allocate (a small file may claim a huge
/// bitmap: a decompression bomb is refused, not decoded).
const DECODE_ALLOC_LIMIT: u64 = 256 << 20;
const MAX_IMAGE_SIDE: u32 = 16_384;

/// Content families a name or a declared type can claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Image,
    Audio,
    Video,
    Pdf,
    Zip,
    Text,
    Executable,
    Other,
}

fn family_of_type(content_type: &str) -> Family {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/pdf" => Family::Pdf,
        "application/zip" => Family::Zip,
        "application/x-executable"
        | "application/x-msdownload"
        | "application/x-elf"
        | "application/x-mach-binary"
        | "application/x-sh" => Family::Executable,
        e if e.starts_with("image/") => Family::Image,
        e if e.starts_with("audio/") => Family::Audio,
        e if e.starts_with("video/") => Family::Video,
        e if e.starts_with("text/") => Family::Text,
        _ => Family::Other,
    }
}

fn family_of_name(name: &str) -> Family {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("png" | "jpg" | "jpeg" | "gif" | "webp") => Family::Image,
        Some("ogg" | "oga" | "opus" | "m4a" | "mp3" | "wav") => Family::Audio,
        Some("webm" | "mp4" | "mov" | "mkv") => Family::Video,
        Some("pdf") => Family::Pdf,
        Some("zip") => Family::Zip,
        Some("txt" | "md" | "csv" | "log") => Family::Text,
        Some("exe" | "dll" | "elf" | "sh" | "app" | "so" | "dylib") => Family::Executable,
        _ => Family::Other,
    }
}

/// The content type of `bytes`, from their first bytes.
pub fn sniff(bytes: &[u8]) -> &'static str {
    let starts = |magic: &[u8]| bytes.starts_with(magic);
    if starts(b"\x89PNG\r\n\x1a\n") {
        "image/png"
    } else if starts(b"\xff\xd8\xff") {
        "image/jpeg"
    } else if starts(b"GIF87a") || starts(b"GIF89a") {
        "image/gif"
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        "image/webp"
    } else if starts(b"OggS") {
        "audio/ogg"
    } else if starts(b"\x1a\x45\xdf\xa3") {
        // Matroska or WebM: the DocType says which; both are served as WebM
        // when audio-only recordings are all we make of them.
        if find(&bytes[..bytes.len().min(64)], b"webm").is_some() {
            "audio/webm"
        } else {
            "application/octet-stream"
        }
    } else if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        let brand = &bytes[8..12];
        if brand == b"M4A " || brand == b"M4B " {
            "audio/mp4"
        } else {
            "video/mp4"
        }
    } else if starts(b"%PDF-") {
        "application/pdf"
    } else if starts(b"PK\x03\x04") {
        "application/zip"
    } else if starts(b"\x7fELF")
        || starts(b"MZ")
        || starts(b"\xcf\xfa\xed\xfe")
        || starts(b"\xce\xfa\xed\xfe")
        || starts(b"\xfe\xed\xfa\xcf")
        || starts(b"#!")
    {
        "application/x-executable"
    } else if std::str::from_utf8(bytes).is_ok() && !bytes.contains(&0) {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Inspects an upload of `kind` named `name` with the client's declared
/// content type (if any).
pub fn inspect(
    kind: AttachmentKind,
    name: &str,
    declared: Option<&str>,
    bytes: &[u8],
) -> Result<Inspected, Refusal> {
    if bytes.is_empty() {
        return Err(Refusal::Empty);
    }
    let content_type = sniff(bytes);
    let found = family_of_type(content_type);
    // A name or declared type that claims a family must match the bytes
    // (a "photo.png" that is an executable is refused, whatever the kind).
    for (claim, family) in [
        (name.to_owned(), family_of_name(name)),
        (
            declared.unwrap_or_default().to_owned(),
            declared.map_or(Family::Other, family_of_type),
        ),
    ] {
        let compatible = match (family, found) {
            // Claims of nothing in particular, or of a program, promise no
            // safe type: any bytes may carry them.
            (Family::Other | Family::Executable, _) => true,
            // Recorders label WebM/MP4 audio as video and the reverse.
            (Family::Audio | Family::Video, Family::Audio | Family::Video) => true,
            // Text is whatever UTF-8 says; a .txt may be sniffed as text.
            (claimed, found) => claimed == found,
        };
        if !compatible {
            return Err(Refusal::ContentMismatch {
                claimed: claim,
                found: content_type.split(';').next().unwrap_or("").to_owned(),
            });
        }
    }
    let mut inspected = Inspected {
        content_type,
        width: None,
        height: None,
        duration_ms: None,
        thumbnail: None,
    };
    match kind {
        AttachmentKind::Image => {
            if found != Family::Image {
                return Err(Refusal::NotAnImage(format!(
                    "the content is {content_type}"
                )));
            }
            let (width, height, thumbnail) = image_facts(bytes)?;
            inspected.width = Some(width);
            inspected.height = Some(height);
            inspected.thumbnail = Some(thumbnail);
        }
        AttachmentKind::Voice => {
            let duration = match content_type {
                "audio/ogg" => ogg_duration_ms(bytes),
                "audio/webm" => webm_duration_ms(bytes),
                "audio/mp4" | "video/mp4" => mp4_duration_ms(bytes),
                other => {
                    return Err(Refusal::NotAudio(format!("the content is {other}")));
                }
            };
            inspected.duration_ms =
                Some(duration.ok_or_else(|| Refusal::NotAudio("no readable duration".into()))?);
        }
        AttachmentKind::File => {}
    }
    Ok(inspected)
}

type Thumbnail = (Vec<u8>, &'static str);

fn image_facts(bytes: &[u8]) -> Result<(u32, u32, Thumbnail), Refusal> {
    let bad = |e: image::ImageError| Refusal::NotAnImage(e.to_string());
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Refusal::NotAnImage(e.to_string()))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(DECODE_ALLOC_LIMIT);
    reader.limits(limits);
    let picture = reader.decode().map_err(bad)?;
    let (width, height) = (picture.width(), picture.height());
    let small = picture.thumbnail(THUMBNAIL_SIDE, THUMBNAIL_SIDE);
    let mut out = Cursor::new(Vec::new());
    // JPEG unless transparency matters.
    let thumbnail = if small.color().has_alpha() {
        small
            .write_to(&mut out, image::ImageFormat::Png)
            .map_err(bad)?;
        (out.into_inner(), "image/png")
    } else {
        small
            .to_rgb8()
            .write_to(&mut out, image::ImageFormat::Jpeg)
            .map_err(bad)?;
        (out.into_inner(), "image/jpeg")
    };
    Ok((width, height, thumbnail))
}

/// Ogg/Opus: the last page's granule position (48 kHz samples) minus the
/// pre-skip of the OpusHead header.
pub fn ogg_duration_ms(bytes: &[u8]) -> Option<u64> {
    let mut at = 0;
    let mut pre_skip = 0u64;
    let mut last_granule = None;
    let mut first = true;
    while at + 27 <= bytes.len() {
        if &bytes[at..at + 4] != b"OggS" {
            return None;
        }
        let granule = u64::from_le_bytes(bytes[at + 6..at + 14].try_into().ok()?);
        let segments = usize::from(bytes[at + 26]);
        let table = bytes.get(at + 27..at + 27 + segments)?;
        let body_len: usize = table.iter().map(|&b| usize::from(b)).sum();
        let body_at = at + 27 + segments;
        let body = bytes.get(body_at..body_at + body_len)?;
        if first {
            // OpusHead: magic, version, channels, pre-skip (u16 LE).
            if !body.starts_with(b"OpusHead") || body.len() < 12 {
                return None;
            }
            pre_skip = u64::from(u16::from_le_bytes([body[10], body[11]]));
            first = false;
        } else if granule != u64::MAX {
            // u64::MAX: no packet ends on this page.
            last_granule = Some(granule);
        }
        at = body_at + body_len;
    }
    let samples = last_granule?.saturating_sub(pre_skip);
    Some(samples * 1000 / 48_000)
}

/// Reads an EBML variable-length integer: (value, length). With `marker`,
/// the length marker bit is kept (element ids).
fn ebml_vint(bytes: &[u8], marker: bool) -> Option<(u64, usize)> {
    let first = *bytes.first()?;
    let len = first.leading_zeros() as usize + 1;
    if len > 8 || bytes.len() < len {
        return None;
    }
    let mut value = if marker {
        u64::from(first)
    } else {
        u64::from(first) & ((1u64 << (8 - len)) - 1)
    };
    for &b in &bytes[1..len] {
        value = (value << 8) | u64::from(b);
    }
    Some((value, len))
}

const EBML_UNKNOWN: u64 = u64::MAX;

/// WebM (what browsers' MediaRecorder writes): the Info Duration when the
/// muxer wrote one, else the last block's time (MediaRecorder streams
/// without a duration; clusters may have unknown sizes).
pub fn webm_duration_ms(bytes: &[u8]) -> Option<u64> {
    const SEGMENT: u64 = 0x1853_8067;
    const INFO: u64 = 0x1549_A966;
    const TIMECODE_SCALE: u64 = 0x2A_D7B1;
    const DURATION: u64 = 0x4489;
    const CLUSTER: u64 = 0x1F43_B675;
    const TIMECODE: u64 = 0xE7;
    const SIMPLE_BLOCK: u64 = 0xA3;
    const BLOCK_GROUP: u64 = 0xA0;
    const BLOCK: u64 = 0xA1;
    // Elements whose children are walked; all others are skipped.
    let is_master = |id: u64| matches!(id, SEGMENT | INFO | CLUSTER | BLOCK_GROUP);
    let mut scale_ns = 1_000_000u64;
    let mut info_duration: Option<f64> = None;
    let mut cluster_time = 0u64;
    let mut last_time: Option<u64> = None;
    let mut at = 0;
    let mut steps = 0;
    while at < bytes.len() {
        steps += 1;
        if steps > 1_000_000 {
            return None;
        }
        let (id, id_len) = ebml_vint(&bytes[at..], true)?;
        let (size, size_len) = ebml_vint(bytes.get(at + id_len..)?, false)?;
        let all_ones = (1u64 << (7 * size_len)) - 1;
        let size = if size == all_ones { EBML_UNKNOWN } else { size };
        let body_at = at + id_len + size_len;
        if is_master(id) {
            // Descend: children follow right away, known size or not.
            at = body_at;
            continue;
        }
        let size = usize::try_from(size).ok().filter(|&s| s != usize::MAX)?;
        let body = bytes.get(body_at..body_at.checked_add(size)?)?;
        let uint = || body.iter().fold(0u64, |v, &b| (v << 8) | u64::from(b));
        match id {
            TIMECODE_SCALE => scale_ns = uint().max(1),
            DURATION => {
                info_duration = match body.len() {
                    4 => Some(f64::from(f32::from_be_bytes(body.try_into().ok()?))),
                    8 => Some(f64::from_be_bytes(body.try_into().ok()?)),
                    _ => None,
                };
            }
            TIMECODE => cluster_time = uint(),
            SIMPLE_BLOCK | BLOCK => {
                // Track number (vint), then a signed 16-bit relative time.
                let (_, track_len) = ebml_vint(body, false)?;
                let rel = body.get(track_len..track_len + 2)?;
                let rel = i64::from(i16::from_be_bytes([rel[0], rel[1]]));
                let time = i64::try_from(cluster_time).ok()? + rel;
                last_time = Some(last_time.unwrap_or(0).max(u64::try_from(time.max(0)).ok()?));
            }
            _ => {}
        }
        at = body_at + size;
    }
    let ticks = match info_duration {
        Some(d) if d.is_finite() && d > 0.0 => d as u64,
        // The last block starts at last_time; one Opus frame (20 ms) more.
        _ => last_time? + 20_000_000 / scale_ns,
    };
    Some(ticks * scale_ns / 1_000_000)
}

/// MP4/M4A (Safari's recorder): the movie header's duration / timescale.
pub fn mp4_duration_ms(bytes: &[u8]) -> Option<u64> {
    fn boxes(bytes: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
        let mut at = 0;
        std::iter::from_fn(move || {
            let header = bytes.get(at..at + 8)?;
            let size = u32::from_be_bytes(header[..4].try_into().ok()?) as usize;
            if size < 8 {
                return None;
            }
            let body = bytes.get(at + 8..at + size)?;
            at += size;
            Some((&header[4..8], body))
        })
    }
    let (_, moov) = boxes(bytes).find(|(kind, _)| *kind == b"moov")?;
    let (_, mvhd) = boxes(moov).find(|(kind, _)| *kind == b"mvhd")?;
    let (timescale, duration) = if *mvhd.first()? == 1 {
        (
            u64::from(u32::from_be_bytes(mvhd.get(20..24)?.try_into().ok()?)),
            u64::from_be_bytes(mvhd.get(24..32)?.try_into().ok()?),
        )
    } else {
        (
            u64::from(u32::from_be_bytes(mvhd.get(12..16)?.try_into().ok()?)),
            u64::from(u32::from_be_bytes(mvhd.get(16..20)?.try_into().ok()?)),
        )
    };
    (timescale > 0).then(|| duration * 1000 / timescale)
}

/// Media shaped like what browsers upload, for tests here and in testkit.
#[cfg(any(test, feature = "testing"))]
pub mod fixtures {
    /// An Ogg page (CRC as the spec computes it).
    fn ogg_page(granule: u64, sequence: u32, flags: u8, body: &[u8]) -> Vec<u8> {
        let mut page = b"OggS".to_vec();
        page.push(0);
        page.push(flags);
        page.extend_from_slice(&granule.to_le_bytes());
        page.extend_from_slice(&7u32.to_le_bytes());
        page.extend_from_slice(&sequence.to_le_bytes());
        page.extend_from_slice(&[0; 4]);
        let mut table = vec![255u8; body.len() / 255];
        table.push((body.len() % 255) as u8);
        page.push(table.len() as u8);
        page.extend_from_slice(&table);
        page.extend_from_slice(body);
        let crc = page.iter().fold(0u32, |crc, &b| {
            let mut c = crc ^ (u32::from(b) << 24);
            for _ in 0..8 {
                c = if c & 0x8000_0000 != 0 {
                    (c << 1) ^ 0x04c1_1db7
                } else {
                    c << 1
                };
            }
            c
        });
        page[22..26].copy_from_slice(&crc.to_le_bytes());
        page
    }

    /// A short Ogg/Opus stream of `seconds` (headers and silent packets),
    /// shaped like a browser's recording.
    pub fn ogg_opus(seconds: u64) -> Vec<u8> {
        let mut head = b"OpusHead".to_vec();
        head.extend_from_slice(&[1, 1]);
        head.extend_from_slice(&312u16.to_le_bytes());
        head.extend_from_slice(&48_000u32.to_le_bytes());
        head.extend_from_slice(&[0, 0, 0]);
        let mut stream = ogg_page(0, 0, 2, &head);
        stream.extend(ogg_page(
            0,
            1,
            0,
            b"OpusTags\x00\x00\x00\x00\x00\x00\x00\x00",
        ));
        let mut granule = 312;
        for i in 0..seconds {
            granule += 48_000;
            // 50 silent 20 ms Opus packets (TOC byte 0xf8) a page.
            let body = vec![0xf8u8; 50];
            stream.extend(ogg_page(
                granule,
                2 + i as u32,
                if i + 1 == seconds { 4 } else { 0 },
                &body,
            ));
        }
        stream
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::fixtures::ogg_opus;
    use super::*;

    #[test]
    fn voice_durations_come_from_the_containers() {
        assert_eq!(ogg_duration_ms(&ogg_opus(3)), Some(3000));
        assert_eq!(ogg_duration_ms(b"OggS\0\0"), None);
        // WebM as MediaRecorder writes it: unknown-size segment and
        // clusters, no Duration; blocks every 20 ms up to 2.48 s.
        // EBML header with DocType "webm".
        let mut webm = vec![0x1a, 0x45, 0xdf, 0xa3, 0x87, 0x42, 0x82, 0x84];
        webm.extend_from_slice(b"webm");
        webm.extend_from_slice(&[
            0x18, 0x53, 0x80, 0x67, 0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ]);
        for cluster in 0..2u16 {
            webm.extend_from_slice(&[0x1f, 0x43, 0xb6, 0x75, 0xff]);
            let base = cluster * 1240;
            webm.extend_from_slice(&[0xe7, 0x82]);
            webm.extend_from_slice(&base.to_be_bytes());
            for i in 0..63i16 {
                let rel = i * 20;
                webm.extend_from_slice(&[0xa3, 0x85, 0x81]);
                webm.extend_from_slice(&rel.to_be_bytes());
                webm.extend_from_slice(&[0x80, 0xf8]);
            }
        }
        assert_eq!(sniff(&webm), "audio/webm");
        assert_eq!(webm_duration_ms(&webm), Some(1240 + 62 * 20 + 20));
        // MP4: ftyp M4A, moov/mvhd v0 with timescale 1000, duration 4321.
        let mut mvhd = vec![0u8; 100];
        mvhd[12..16].copy_from_slice(&1000u32.to_be_bytes());
        mvhd[16..20].copy_from_slice(&4321u32.to_be_bytes());
        let boxed = |kind: &[u8], body: &[u8]| {
            let mut b = ((body.len() + 8) as u32).to_be_bytes().to_vec();
            b.extend_from_slice(kind);
            b.extend_from_slice(body);
            b
        };
        let mut mp4 = boxed(b"ftyp", b"M4A \0\0\0\0");
        mp4.extend(boxed(b"moov", &boxed(b"mvhd", &mvhd)));
        assert_eq!(sniff(&mp4), "audio/mp4");
        assert_eq!(mp4_duration_ms(&mp4), Some(4321));
    }

    #[test]
    fn disguised_and_broken_uploads_are_refused() {
        let elf = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0binary".to_vec();
        for (kind, name, declared) in [
            (AttachmentKind::Image, "cat.png", Some("image/png")),
            (AttachmentKind::File, "cat.png", None),
            (AttachmentKind::File, "notes", Some("image/png")),
        ] {
            let refused = inspect(kind, name, declared, &elf).unwrap_err();
            assert_eq!(
                refused.code(),
                "content_mismatch",
                "{kind:?} {name} {declared:?}"
            );
            assert!(
                refused.to_string().contains("application/x-executable"),
                "{refused}"
            );
        }
        // An executable named as one is a file like any other, and so are
        // opaque bytes under any name that promises no safe type.
        let ok = inspect(AttachmentKind::File, "tool.exe", None, &elf).unwrap();
        assert_eq!(ok.content_type, "application/x-executable");
        let opaque = [0u8, 1, 2, 255, 254];
        for name in ["data.bin", "setup.exe", "archive.7z", "noext"] {
            let ok = inspect(AttachmentKind::File, name, None, &opaque).unwrap();
            assert_eq!(ok.content_type, "application/octet-stream", "{name}");
        }
        // An image upload must decode.
        let truncated = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        assert_eq!(
            inspect(AttachmentKind::Image, "x.png", None, &truncated)
                .unwrap_err()
                .code(),
            "not_an_image"
        );
        assert_eq!(
            inspect(AttachmentKind::Voice, "v.ogg", None, b"hello")
                .unwrap_err()
                .code(),
            "content_mismatch"
        );
        assert_eq!(
            inspect(AttachmentKind::Voice, "v", None, b"hello")
                .unwrap_err()
                .code(),
            "not_audio"
        );
        assert_eq!(
            inspect(AttachmentKind::File, "x", None, b"").unwrap_err(),
            Refusal::Empty
        );
        // Text is text; HTML is never served as HTML.
        assert_eq!(
            sniff(b"<html><script>alert(1)</script>"),
            "text/plain; charset=utf-8"
        );
    }

    #[test]
    fn an_image_gets_its_dimensions_and_a_small_thumbnail() {
        let picture = image::RgbImage::from_fn(1200, 600, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])
        });
        let mut png = Cursor::new(Vec::new());
        picture.write_to(&mut png, image::ImageFormat::Png).unwrap();
        let found = inspect(
            AttachmentKind::Image,
            "wide.png",
            Some("image/png"),
            png.get_ref(),
        )
        .unwrap();
        assert_eq!(
            (found.content_type, found.width, found.height),
            ("image/png", Some(1200), Some(600))
        );
        let (thumb, thumb_type) = found.thumbnail.unwrap();
        assert_eq!(thumb_type, "image/jpeg");
        let small = image::load_from_memory(&thumb).unwrap();
        assert_eq!((small.width(), small.height()), (320, 160));
        // A bomb: a tiny PNG header claiming 100k x 100k pixels.
        let mut bomb = png.get_ref().clone();
        bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        assert_eq!(
            inspect(AttachmentKind::Image, "b.png", None, &bomb)
                .unwrap_err()
                .code(),
            "not_an_image"
        );
    }
}
