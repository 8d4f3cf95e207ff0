//! QR codes of deeplinks and `otpauth://` URIs, as PNG (1 bit per pixel, encoded with `png`)
//! and SVG (one path), drawn from the `qrcode` crate's module matrix, only in the formats a
//! caller asks for ([`QrFormats`]).

use base64::Engine as _;
use qrcode::{Color, EcLevel, QrCode};

/// Pixels per module in the PNG.
const SCALE: usize = 6;
/// Quiet zone in modules (ISO/IEC 18004).
const QUIET: usize = 4;

/// Which images of a QR code a caller asked for (`?qr=png`, `svg`, or `png,svg`): none by
/// default, as drawing them costs far more than the enrollment itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct QrFormats {
    /// A PNG, base64.
    pub png: bool,
    /// An SVG document.
    pub svg: bool,
}

impl QrFormats {
    /// Parses the `qr` query value: `png`, `svg`, or both separated by a comma.
    pub(crate) fn parse(v: &str) -> Option<QrFormats> {
        let mut f = QrFormats::default();
        for part in v.split(',') {
            match part {
                "png" => f.png = true,
                "svg" => f.svg = true,
                _ => return None,
            }
        }
        Some(f)
    }

    /// Whether any image is asked for.
    pub(crate) fn any(self) -> bool {
        self.png || self.svg
    }
}

/// The images of a QR code that were asked for.
pub(crate) struct Qr {
    /// PNG, base64 (standard alphabet, padded).
    pub png_base64: Option<String>,
    /// SVG document.
    pub svg: Option<String>,
}

impl Qr {
    /// Adds the images to a JSON object as `qr_png_base64` and `qr_svg`.
    pub(crate) fn insert_into(self, object: &mut serde_json::Value) {
        if let Some(o) = object.as_object_mut() {
            if let Some(png) = self.png_base64 {
                o.insert("qr_png_base64".into(), png.into());
            }
            if let Some(svg) = self.svg {
                o.insert("qr_svg".into(), svg.into());
            }
        }
    }
}

/// Draws `text` (deeplinks and otpauth URIs are at most a few hundred bytes) in the formats
/// asked for.
pub(crate) fn render(text: &str, formats: QrFormats) -> Option<Qr> {
    let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M).ok()?;
    let width = code.width();
    let colors = code.to_colors();
    let dark = |x: usize, y: usize| colors.get(y * width + x) == Some(&Color::Dark);
    let side = width + 2 * QUIET;
    let svg = formats.svg.then(|| {
        // One unit per module, one path of 1x1 squares.
        let mut path = String::with_capacity(width * width * 4);
        for y in 0..width {
            for x in 0..width {
                if dark(x, y) {
                    path.push_str(&format!("M{},{}h1v1h-1z", x + QUIET, y + QUIET));
                }
            }
        }
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {side} {side}\" \
             width=\"{px}\" height=\"{px}\" shape-rendering=\"crispEdges\">\
             <rect width=\"{side}\" height=\"{side}\" fill=\"#fff\"/>\
             <path d=\"{path}\" fill=\"#000\"/></svg>",
            px = side * SCALE
        )
    });
    let png_base64 = if formats.png {
        // 1-bit grayscale, 0 = black; rows padded to whole bytes.
        let px = side * SCALE;
        let stride = px.div_ceil(8);
        let mut pixels = vec![0xffu8; stride * px];
        for y in 0..width {
            for x in 0..width {
                if !dark(x, y) {
                    continue;
                }
                for dy in 0..SCALE {
                    let row = (y + QUIET) * SCALE + dy;
                    for dx in 0..SCALE {
                        let col = (x + QUIET) * SCALE + dx;
                        if let Some(b) = pixels.get_mut(row * stride + col / 8) {
                            *b &= !(0x80u8 >> (col % 8));
                        }
                    }
                }
            }
        }
        let mut out = Vec::new();
        {
            let size = u32::try_from(px).ok()?;
            let mut enc = png::Encoder::new(&mut out, size, size);
            enc.set_color(png::ColorType::Grayscale);
            enc.set_depth(png::BitDepth::One);
            let mut writer = enc.write_header().ok()?;
            writer.write_image_data(&pixels).ok()?;
            writer.finish().ok()?;
        }
        Some(base64::engine::general_purpose::STANDARD.encode(&out))
    } else {
        None
    };
    Some(Qr { png_base64, svg })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn png_and_svg_carry_the_module_matrix() {
        let both = QrFormats {
            png: true,
            svg: true,
        };
        let qr = render("zoftoken://enroll?s=abc", both).unwrap();
        let png = base64::engine::general_purpose::STANDARD
            .decode(qr.png_base64.unwrap())
            .unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let decoder = png::Decoder::new(std::io::Cursor::new(png));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        let code =
            QrCode::with_error_correction_level(b"zoftoken://enroll?s=abc", EcLevel::M).unwrap();
        let side = (code.width() + 2 * QUIET) * SCALE;
        assert_eq!((info.width as usize, info.height as usize), (side, side));
        // The top-left finder pattern's corner module is dark, the quiet zone light.
        let bit = |x: usize, y: usize| buf[y * info.line_size + x / 8] & (0x80 >> (x % 8)) != 0;
        assert!(bit(0, 0), "quiet zone is white");
        assert!(!bit(QUIET * SCALE, QUIET * SCALE), "finder corner is black");
        let squares = qr.svg.unwrap().matches("h1v1h-1z").count();
        let dark = code
            .to_colors()
            .iter()
            .filter(|c| **c == Color::Dark)
            .count();
        assert_eq!(squares, dark);
        // Only what is asked for is drawn.
        let png_only = render("zoftoken://enroll?s=abc", QrFormats::parse("png").unwrap()).unwrap();
        assert!(png_only.png_base64.is_some() && png_only.svg.is_none());
        assert_eq!(QrFormats::parse("svg,png"), Some(both));
        assert_eq!(QrFormats::parse("gif"), None);
        assert_eq!(QrFormats::parse(""), None);
    }
}
