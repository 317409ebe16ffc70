//! Bytes to 8-bit RGB pixels, as `PIL.Image.open(path).convert("RGB")` gives them.
//!
//! JPEG goes through libjpeg-turbo (the decoder inside PIL; another decoder moves
//! encodings by up to 0.06), everything else through the `image` crate. No EXIF
//! rotation. Alpha is dropped (not blended), grey is replicated, palettes expanded,
//! 16-bit samples cut to their high byte as PIL does. The pixel count is checked from
//! the header before any pixel buffer is allocated.

use crate::job::RgbPixels;
use image::{DynamicImage, ImageFormat};
use std::io::Cursor;

/// Why an image could not be decoded; the text goes to the image's output line.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Zero bytes.
    #[error("empty file")]
    Empty,
    /// Not a format we know from its first bytes.
    #[error("not an image (unrecognised file signature)")]
    UnknownFormat,
    /// The header claims more pixels than allowed.
    #[error("image too large: {width}x{height} = {pixels} pixels exceeds the limit of {limit} (possible decompression bomb)")]
    TooLarge {
        /// Width from the header.
        width: u64,
        /// Height from the header.
        height: u64,
        /// Their product.
        pixels: u64,
        /// The limit in force.
        limit: u64,
    },
    /// The decoder failed (truncated data, corrupt stream, ...).
    #[error("cannot decode {format}: {reason}")]
    Corrupt {
        /// The format by signature.
        format: &'static str,
        /// The decoder's message.
        reason: String,
    },
}

/// Decodes `bytes` to RGB, refusing images above `max_pixels`.
pub fn decode_rgb(bytes: &[u8], max_pixels: u64) -> Result<RgbPixels, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let format = image::guess_format(bytes).map_err(|_| DecodeError::UnknownFormat)?;
    if format == ImageFormat::Jpeg {
        decode_jpeg(bytes, max_pixels)
    } else {
        decode_other(bytes, format, max_pixels)
    }
}

fn check_size(width: u64, height: u64, limit: u64) -> Result<(), DecodeError> {
    let pixels = width.saturating_mul(height);
    if pixels > limit {
        return Err(DecodeError::TooLarge {
            width,
            height,
            pixels,
            limit,
        });
    }
    if pixels == 0 {
        return Err(DecodeError::Corrupt {
            format: "image",
            reason: "zero width or height".into(),
        });
    }
    Ok(())
}

fn decode_jpeg(bytes: &[u8], max_pixels: u64) -> Result<RgbPixels, DecodeError> {
    let corrupt = |e: turbojpeg::Error| DecodeError::Corrupt {
        format: "JPEG",
        reason: e.to_string(),
    };
    let mut decompressor = turbojpeg::Decompressor::new().map_err(corrupt)?;
    let header = decompressor.read_header(bytes).map_err(corrupt)?;
    check_size(header.width as u64, header.height as u64, max_pixels)?;
    if header.colorspace == turbojpeg::Colorspace::CMYK
        || header.colorspace == turbojpeg::Colorspace::YCCK
    {
        return Err(DecodeError::Corrupt {
            format: "JPEG",
            reason: "CMYK JPEGs are not supported".into(),
        });
    }
    let (width, height) = (header.width, header.height);
    let mut data = vec![0u8; width * height * 3];
    let out = turbojpeg::Image {
        pixels: data.as_mut_slice(),
        width,
        pitch: width * 3,
        height,
        format: turbojpeg::PixelFormat::RGB,
    };
    // libjpeg-turbo's defaults are PIL's: accurate integer DCT, fancy upsampling. A
    // truncated stream is an error here, as it is in PIL (LOAD_TRUNCATED_IMAGES off).
    decompressor.decompress(bytes, out).map_err(corrupt)?;
    Ok(RgbPixels {
        width: width as u32,
        height: height as u32,
        data,
    })
}

fn decode_other(
    bytes: &[u8],
    format: ImageFormat,
    max_pixels: u64,
) -> Result<RgbPixels, DecodeError> {
    let name = format_name(format);
    let corrupt = |e: image::ImageError| DecodeError::Corrupt {
        format: name,
        reason: e.to_string(),
    };
    let reader = image::io::Reader::with_format(Cursor::new(bytes), format);
    let (w, h) = reader.into_dimensions().map_err(corrupt)?;
    check_size(w as u64, h as u64, max_pixels)?;
    let mut reader = image::io::Reader::with_format(Cursor::new(bytes), format);
    let mut limits = image::io::Limits::default();
    // Room for the largest allowed image at 16 bits per sample, 4 channels.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(1 << 20));
    reader.limits(limits);
    let img = reader.decode().map_err(corrupt)?;
    Ok(to_rgb_like_pil(img))
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Png => "PNG",
        ImageFormat::Gif => "GIF",
        ImageFormat::Bmp => "BMP",
        ImageFormat::Tiff => "TIFF",
        ImageFormat::WebP => "WebP",
        _ => "image",
    }
}

/// PIL's `convert("RGB")` for each pixel layout the `image` crate can produce.
fn to_rgb_like_pil(img: DynamicImage) -> RgbPixels {
    let (width, height) = (img.width(), img.height());
    let hi = |v: u16| (v >> 8) as u8;
    // PIL opens 16-bit grey as mode "I;16", whose conversion to RGB clips at 255.
    let clip = |v: u16| v.min(255) as u8;
    let data: Vec<u8> = match img {
        DynamicImage::ImageRgb8(b) => b.into_raw(),
        DynamicImage::ImageRgba8(b) => b.pixels().flat_map(|p| [p[0], p[1], p[2]]).collect(),
        DynamicImage::ImageLuma8(b) => b.pixels().flat_map(|p| [p[0]; 3]).collect(),
        DynamicImage::ImageLumaA8(b) => b.pixels().flat_map(|p| [p[0]; 3]).collect(),
        DynamicImage::ImageRgb16(b) => b
            .pixels()
            .flat_map(|p| [hi(p[0]), hi(p[1]), hi(p[2])])
            .collect(),
        DynamicImage::ImageRgba16(b) => b
            .pixels()
            .flat_map(|p| [hi(p[0]), hi(p[1]), hi(p[2])])
            .collect(),
        DynamicImage::ImageLuma16(b) => b.pixels().flat_map(|p| [clip(p[0]); 3]).collect(),
        DynamicImage::ImageLumaA16(b) => b.pixels().flat_map(|p| [clip(p[0]); 3]).collect(),
        other => other.to_rgb8().into_raw(),
    };
    RgbPixels {
        width,
        height,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, Luma, Rgba};

    fn png(img: DynamicImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png)
            .expect("encode png");
        out.into_inner()
    }

    #[test]
    fn alpha_is_dropped_not_blended() {
        let img = ImageBuffer::from_pixel(3, 2, Rgba([10u8, 20, 30, 0]));
        let rgb = decode_rgb(&png(DynamicImage::ImageRgba8(img)), DEFAULT).expect("decode");
        assert_eq!((rgb.width, rgb.height), (3, 2));
        assert_eq!(&rgb.data[..3], &[10, 20, 30]);
    }

    #[test]
    fn sixteen_bit_grey_clips_like_pil_i16() {
        let img = ImageBuffer::from_fn(2, 1, |x, _| Luma([if x == 0 { 100u16 } else { 40000 }]));
        let rgb = decode_rgb(&png(DynamicImage::ImageLuma16(img)), DEFAULT).expect("decode");
        assert_eq!(rgb.data, vec![100, 100, 100, 255, 255, 255]);
    }

    #[test]
    fn refuses_huge_header_before_allocating() {
        // A 1x1 PNG whose header is patched to claim 60000x60000.
        let mut bytes = png(DynamicImage::ImageRgb8(ImageBuffer::from_pixel(
            1,
            1,
            image::Rgb([0u8; 3]),
        )));
        bytes[16..20].copy_from_slice(&60000u32.to_be_bytes());
        bytes[20..24].copy_from_slice(&60000u32.to_be_bytes());
        let crc = crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        match decode_rgb(&bytes, DEFAULT) {
            Err(DecodeError::TooLarge {
                width: 60000,
                height: 60000,
                ..
            }) => {}
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn empty_and_text_are_refused() {
        assert!(matches!(decode_rgb(b"", DEFAULT), Err(DecodeError::Empty)));
        assert!(matches!(
            decode_rgb(b"hello, world\n", DEFAULT),
            Err(DecodeError::UnknownFormat)
        ));
    }

    const DEFAULT: u64 = crate::settings::DEFAULT_MAX_PIXELS;

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in data {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
}
