//! QR codes of deeplinks and `otpauth://` URIs, as PNG (1 bit per pixel, encoded with `png`)
//! and SVG (one path), drawn from the `qrcode` crate's module matrix.

use base64::Engine as _;
use qrcode::{Color, EcLevel, QrCode};

/// Pixels per module in the PNG.
const SCALE: usize = 6;
/// Quiet zone in modules (ISO/IEC 18004).
const QUIET: usize = 4;

/// A QR code in both forms.
pub(crate) struct Qr {
    /// PNG, base64 (standard alphabet, padded).
    pub png_base64: String,
    /// SVG document.
    pub svg: String,
}

/// Draws `text` (deeplinks and otpauth URIs are at most a few hundred bytes).
pub(crate) fn render(text: &str) -> Option<Qr> {
    let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M).ok()?;
    let width = code.width();
    let colors = code.to_colors();
    let dark = |x: usize, y: usize| colors.get(y * width + x) == Some(&Color::Dark);
    let side = width + 2 * QUIET;
    // SVG: one unit per module, one path of 1x1 squares.
    let mut path = String::with_capacity(width * width * 4);
    for y in 0..width {
        for x in 0..width {
            if dark(x, y) {
                path.push_str(&format!("M{},{}h1v1h-1z", x + QUIET, y + QUIET));
            }
        }
    }
    let svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {side} {side}\" \
         width=\"{px}\" height=\"{px}\" shape-rendering=\"crispEdges\">\
         <rect width=\"{side}\" height=\"{side}\" fill=\"#fff\"/>\
         <path d=\"{path}\" fill=\"#000\"/></svg>",
        px = side * SCALE
    );
    // PNG: 1-bit grayscale, 0 = black; rows padded to whole bytes.
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
    Some(Qr {
        png_base64: base64::engine::general_purpose::STANDARD.encode(&out),
        svg,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn png_and_svg_carry_the_module_matrix() {
        let qr = render("zoftoken://enroll?s=abc").unwrap();
        let png = base64::engine::general_purpose::STANDARD
            .decode(&qr.png_base64)
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
        let squares = qr.svg.matches("h1v1h-1z").count();
        let dark = code
            .to_colors()
            .iter()
            .filter(|c| **c == Color::Dark)
            .count();
        assert_eq!(squares, dark);
    }
}
