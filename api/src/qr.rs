//! QR codes of deeplinks and `otpauth://` URIs, as PNG (1 bit per pixel, encoded with `png`)
//! and SVG (one path), drawn from the `fast_qr` crate's module matrix, only in the formats a
//! caller asks for ([`QrFormats`]).

use base64::Engine as _;
use std::fmt::Write as _;

use fast_qr::{QRBuilder, ECL};

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
/// asked for; `None` only if `text` is too long for any QR code.
pub(crate) fn render(text: &str, formats: QrFormats) -> Option<Qr> {
    let code = QRBuilder::new(text.as_bytes()).ecl(ECL::M).build().ok()?;
    let width = code.size;
    let dark = |x: usize, y: usize| code.data.get(y * width + x).is_some_and(|m| m.value());
    let side = width + 2 * QUIET;
    let svg = formats.svg.then(|| {
        // One unit per module: a path of horizontal runs of dark modules.
        let mut path = String::with_capacity(width * width * 2);
        for y in 0..width {
            let mut x = 0;
            while x < width {
                if !dark(x, y) {
                    x += 1;
                    continue;
                }
                let run = (x..width).take_while(|&i| dark(i, y)).count();
                let _ = write!(path, "M{},{}h{run}v1h-{run}z", x + QUIET, y + QUIET);
                x += run;
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
        // 1-bit grayscale, 0 = black, rows padded to whole bytes. Each module row is drawn
        // once and copied SCALE times.
        let px = side * SCALE;
        let stride = px.div_ceil(8);
        let mut pixels = vec![0xffu8; stride * px];
        for y in 0..width {
            let top = (y + QUIET) * SCALE * stride;
            let (row, below) = pixels
                .get_mut(top..top + SCALE * stride)?
                .split_at_mut(stride);
            for x in (0..width).filter(|&x| dark(x, y)) {
                for col in (x + QUIET) * SCALE..(x + QUIET + 1) * SCALE {
                    if let Some(b) = row.get_mut(col / 8) {
                        *b &= !(0x80u8 >> (col % 8));
                    }
                }
            }
            for copy in below.chunks_exact_mut(stride) {
                copy.copy_from_slice(row);
            }
        }
        let mut out = Vec::with_capacity(1024);
        {
            let size = u32::try_from(px).ok()?;
            let mut enc = png::Encoder::new(&mut out, size, size);
            enc.set_color(png::ColorType::Grayscale);
            enc.set_depth(png::BitDepth::One);
            enc.set_compression(png::Compression::Fast);
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

    /// A deeplink as long as real ones (two endpoints, a long username).
    const LINK: &str = "zoftoken://enroll?v=1&s=bank&e=192.0.2.10%3A4000,192.0.2.11%3A4000\
                        &u=firstname.lastname%40example.com&l=QWERTYUIOPASDFGHJKLZXCVBNM234567\
                        QWERTYUIOPASDFGH&t=0123456789abcdef";

    /// Reads the QR code in a picture of `side` × `side` pixels with an independent decoder.
    fn decode(side: usize, dark: impl Fn(usize, usize) -> bool) -> String {
        let mut img = rqrr::PreparedImage::prepare_from_greyscale(side, side, |x, y| {
            if dark(x, y) {
                0
            } else {
                255
            }
        });
        let grids = img.detect_grids();
        assert_eq!(grids.len(), 1, "one QR code in the picture");
        grids[0].decode().unwrap().1
    }

    #[test]
    fn the_png_reads_back_as_the_link() {
        let qr = render(LINK, QrFormats::parse("png").unwrap()).unwrap();
        assert!(qr.svg.is_none(), "only what is asked for is drawn");
        let png = base64::engine::general_purpose::STANDARD
            .decode(qr.png_base64.unwrap())
            .unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let mut reader = png::Decoder::new(std::io::Cursor::new(png))
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.width, info.height);
        assert_eq!(info.width as usize % SCALE, 0);
        let bit = |x: usize, y: usize| buf[y * info.line_size + x / 8] & (0x80 >> (x % 8)) == 0;
        assert!(!bit(0, 0), "the quiet zone is white");
        assert!(
            bit(QUIET * SCALE, QUIET * SCALE),
            "the finder's corner is black"
        );
        assert_eq!(decode(info.width as usize, bit), LINK);
    }

    #[test]
    fn the_svg_reads_back_as_the_link() {
        let uri = "otpauth://totp/bank:firstname.lastname%40example.com?secret=\
                   JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP&issuer=bank&algorithm=SHA1&digits=6&period=30";
        let svg = render(uri, QrFormats::parse("svg").unwrap())
            .unwrap()
            .svg
            .unwrap();
        let side: usize = svg
            .split("viewBox=\"0 0 ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap()
            .parse()
            .unwrap();
        // Rasterise the path's runs (`M{x},{y}h{n}v1h-{n}z`) at 4 pixels per module.
        let mut modules = vec![false; side * side];
        let path = svg
            .split(" d=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        for run in path.split('z').filter(|r| !r.is_empty()) {
            let (at, rest) = run.trim_start_matches('M').split_once('h').unwrap();
            let (x, y) = at.split_once(',').unwrap();
            let (x, y): (usize, usize) = (x.parse().unwrap(), y.parse().unwrap());
            let n: usize = rest.split_once('v').unwrap().0.parse().unwrap();
            for i in x..x + n {
                modules[y * side + i] = true;
            }
        }
        assert_eq!(
            decode(side * 4, |x, y| modules[(y / 4) * side + x / 4]),
            uri
        );
    }

    #[test]
    fn formats_are_parsed_strictly() {
        let both = QrFormats {
            png: true,
            svg: true,
        };
        assert_eq!(QrFormats::parse("png,svg"), Some(both));
        assert_eq!(QrFormats::parse("svg,png"), Some(both));
        assert_eq!(QrFormats::parse("gif"), None);
        assert_eq!(QrFormats::parse(""), None);
        assert!(!QrFormats::default().any());
    }

    #[test]
    fn text_too_long_for_a_qr_code_is_refused() {
        assert!(render(&"x".repeat(3000), QrFormats::parse("png").unwrap()).is_none());
    }
}
