//! kombu's body compressions (`celery-protocol.md` §3.3) and Celery 5.7's
//! compressed stored results (§3.4).
//!
//! | name (header value or alias) | format | supported |
//! |---|---|---|
//! | `application/x-gzip`, `gzip`, `zlib` | a **zlib** stream (RFC 1950), as kombu writes it; a real gzip stream (RFC 1952) is accepted too | yes |
//! | `application/x-bz2`, `bzip2`, `bzip` | bzip2 | yes |
//! | `application/x-lzma`, `lzma`, `xz` | xz (Python's `lzma.compress` default), or the legacy `.lzma` format | yes |
//! | `application/x-brotli`, `brotli`, `application/zstd`, `zstd`, `zstandard` | | no: [`ErrorKind::Unsupported`] |
//!
//! Output is capped ([`DEFAULT_LIMIT`]) so a small hostile payload cannot
//! expand into all memory.
//!
//! ```
//! use celeriac_core::wire::compress;
//! // zlib.compress(b'[[2, 3], {}, {}]') in Python
//! let z = [0x78, 0x9c, 0x8b, 0x8e, 0x36, 0xd2, 0x51, 0x30, 0x8e, 0xd5, 0x51, 0xa8, 0xae,
//!          0x05, 0xe1, 0x58, 0x00, 0x24, 0x5b, 0x04, 0xaa];
//! assert_eq!(compress::decompress("application/x-gzip", &z).unwrap(), b"[[2, 3], {}, {}]");
//! ```

use std::borrow::Cow;
use std::io::Read;

use crate::error::{Error, ErrorKind};

/// The largest decompressed size accepted by [`decompress`]: 512 MiB,
/// Redis's own limit for one value.
pub const DEFAULT_LIMIT: usize = 512 << 20;

/// The prefix Celery 5.7 puts before a compressed stored result.
pub const RESULT_PREFIX: &[u8] = b"\x00celery-compressed\x00";

/// The compressions kombu names, by what their bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compression {
    /// kombu's `application/x-gzip`: a zlib stream (or a gzip one).
    Zlib,
    /// kombu's `application/x-bz2`.
    Bzip2,
    /// kombu's `application/x-lzma`: an xz stream (or a legacy `.lzma` one).
    Xz,
}

impl Compression {
    /// Looks up a kombu content type or alias (case-insensitive).
    ///
    /// Known but unsupported names (lzma, brotli, zstd) and unknown ones
    /// give an [`ErrorKind::Unsupported`] error naming them.
    pub fn from_name(name: &str) -> Result<Self, Error> {
        let n = name.trim().to_ascii_lowercase();
        match n.as_str() {
            "application/x-gzip" | "gzip" | "zlib" => Ok(Compression::Zlib),
            "application/x-bz2" | "bzip2" | "bzip" => Ok(Compression::Bzip2),
            "application/x-lzma" | "lzma" | "xz" => Ok(Compression::Xz),
            "application/x-brotli" | "brotli" | "application/zstd" | "zstd" | "zstandard" => {
                Err(Error::new(
                    ErrorKind::Unsupported,
                    format!("compression `{name}` is not supported (only zlib/gzip, bzip2 and xz)"),
                ))
            }
            _ => Err(Error::new(
                ErrorKind::Unsupported,
                format!("unknown compression `{name}`"),
            )),
        }
    }
}

/// Decompresses `data` compressed as kombu's `content_type` says, up to
/// [`DEFAULT_LIMIT`] bytes.
///
/// Errors: [`ErrorKind::Unsupported`] for a compression this build does not
/// read, [`ErrorKind::Malformed`] for corrupt data, and
/// [`ErrorKind::PayloadTooLarge`] past the limit.
pub fn decompress(content_type: &str, data: &[u8]) -> Result<Vec<u8>, Error> {
    decompress_limited(content_type, data, DEFAULT_LIMIT)
}

/// Like [`decompress`], with an explicit limit on the output size.
pub fn decompress_limited(content_type: &str, data: &[u8], limit: usize) -> Result<Vec<u8>, Error> {
    let kind = Compression::from_name(content_type)?;
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    let mut out = Vec::new();
    let read = match kind {
        Compression::Zlib if data.starts_with(&[0x1f, 0x8b]) => {
            flate2::read::MultiGzDecoder::new(data)
                .take(cap)
                .read_to_end(&mut out)
        }
        Compression::Zlib => flate2::read::ZlibDecoder::new(data)
            .take(cap)
            .read_to_end(&mut out),
        Compression::Bzip2 => bzip2::read::MultiBzDecoder::new(data)
            .take(cap)
            .read_to_end(&mut out),
        Compression::Xz => return decompress_xz(content_type, data, limit),
    };
    if let Err(e) = read {
        return Err(Error::with_source(
            ErrorKind::Malformed,
            format!("cannot decompress `{content_type}` data"),
            e,
        ));
    }
    if out.len() > limit {
        return Err(Error::new(
            ErrorKind::PayloadTooLarge,
            format!("`{content_type}` data decompresses to more than {limit} bytes"),
        ));
    }
    Ok(out)
}

/// xz (or legacy lzma) into a writer that stops at `limit`.
fn decompress_xz(content_type: &str, data: &[u8], limit: usize) -> Result<Vec<u8>, Error> {
    let mut w = Capped {
        out: Vec::new(),
        limit,
        over: false,
    };
    let mut input = data;
    let r = if data.starts_with(b"\xfd7zXZ\x00") {
        lzma_rs::xz_decompress(&mut input, &mut w)
    } else {
        lzma_rs::lzma_decompress(&mut input, &mut w)
    };
    match r {
        Ok(()) => Ok(w.out),
        Err(_) if w.over => Err(Error::new(
            ErrorKind::PayloadTooLarge,
            format!("`{content_type}` data decompresses to more than {limit} bytes"),
        )),
        Err(e) => Err(Error::with_source(
            ErrorKind::Malformed,
            format!("cannot decompress `{content_type}` data"),
            std::io::Error::other(format!("{e:?}")),
        )),
    }
}

/// A writer that refuses to grow past its limit.
struct Capped {
    out: Vec<u8>,
    limit: usize,
    over: bool,
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + buf.len() > self.limit {
            self.over = true;
            return Err(std::io::Error::other("decompressed data over the limit"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Removes Celery 5.7's result compression, if present.
///
/// A stored result that starts with `\x00celery-compressed\x00` is followed
/// by the compression's content type, `\x00`, and the compressed JSON; it is
/// returned decompressed. Anything else is returned unchanged (borrowed).
///
/// ```
/// use celeriac_core::wire::compress::strip_result_compression;
/// let plain = br#"{"status": "SUCCESS"}"#;
/// assert_eq!(&*strip_result_compression(plain).unwrap(), plain);
/// ```
pub fn strip_result_compression(bytes: &[u8]) -> Result<Cow<'_, [u8]>, Error> {
    let Some(rest) = bytes.strip_prefix(RESULT_PREFIX) else {
        return Ok(Cow::Borrowed(bytes));
    };
    let Some(nul) = rest.iter().position(|&b| b == 0) else {
        return Err(Error::new(
            ErrorKind::Malformed,
            "compressed result has no content type terminator",
        ));
    };
    let content_type = std::str::from_utf8(&rest[..nul]).map_err(|e| {
        Error::with_source(
            ErrorKind::Malformed,
            "compressed result's content type is not text",
            e,
        )
    })?;
    decompress(content_type, &rest[nul + 1..]).map(Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;

    const BODY: &[u8] =
        br#"[[2, 3], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#;

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn bz2(data: &[u8]) -> Vec<u8> {
        let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn zlib_under_every_kombu_name() {
        let z = zlib(BODY);
        assert_eq!(&z[..2], &[0x78, 0x9c]);
        for name in ["application/x-gzip", "gzip", "zlib", "Application/X-GZIP"] {
            assert_eq!(decompress(name, &z).unwrap(), BODY);
        }
    }

    #[test]
    fn real_gzip_is_accepted() {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(BODY).unwrap();
        let g = e.finish().unwrap();
        assert_eq!(decompress("application/x-gzip", &g).unwrap(), BODY);
    }

    #[test]
    fn bzip2_under_every_kombu_name() {
        let b = bz2(BODY);
        for name in ["application/x-bz2", "bzip2", "bzip"] {
            assert_eq!(decompress(name, &b).unwrap(), BODY);
        }
    }

    #[test]
    fn xz_and_legacy_lzma_from_python() {
        // lzma.compress(data) and lzma.compress(data, format=lzma.FORMAT_ALONE)
        let data: Vec<u8> = {
            let digits: Vec<String> = (0..500).map(|i| (i % 10).to_string()).collect();
            format!("[[{}], {{}}, {{}}]", digits.join(", ")).into_bytes()
        };
        let xz = hex("fd377a585a000004e6d6b4460200210116000000742fe5a3e005e5002d5d002de0bc58211562080a1683ebc62ffc1293f2fdef203f35889f6890f618f55824f22e24f637f525bc04c48ded0000000000ab50239dce5caeb9000149e60b000000073a979bb1c467fb020000000004595a");
        let alone = hex("5d00008000ffffffffffffffff002de0bc58211562080a1683ebc62ffc1293f2fdef203f35889f6890f618f55824f22e24f637f525bc04c6aa5246bffef8e940");
        for name in ["application/x-lzma", "lzma", "xz"] {
            assert_eq!(decompress(name, &xz).unwrap(), data);
            assert_eq!(decompress(name, &alone).unwrap(), data);
        }
        let err = decompress_limited("xz", &xz, 1000).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PayloadTooLarge);
        assert_eq!(
            decompress("xz", &xz[..40]).unwrap_err().kind(),
            ErrorKind::Malformed
        );
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn unsupported_and_unknown_names() {
        for name in ["application/x-brotli", "application/zstd", "rot13"] {
            let err = decompress(name, b"x").unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Unsupported, "{name}");
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn corrupt_data_is_malformed() {
        for (name, data) in [
            ("gzip", &b"not zlib"[..]),
            ("bzip2", b"not bzip2"),
            ("gzip", b""),
            ("gzip", &zlib(BODY)[..10]),
        ] {
            assert_eq!(
                decompress(name, data).unwrap_err().kind(),
                ErrorKind::Malformed
            );
        }
    }

    #[test]
    fn output_is_capped() {
        let z = zlib(&vec![b'a'; 10_000]);
        assert_eq!(
            decompress_limited("gzip", &z, 10_000).unwrap().len(),
            10_000
        );
        let err = decompress_limited("gzip", &z, 9_999).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PayloadTooLarge);
    }

    #[test]
    fn result_prefix_is_stripped() {
        let mut stored = RESULT_PREFIX.to_vec();
        stored.extend_from_slice(b"application/x-gzip\x00");
        stored.extend_from_slice(&zlib(br#"{"status": "SUCCESS", "result": 5}"#));
        assert_eq!(
            &*strip_result_compression(&stored).unwrap(),
            br#"{"status": "SUCCESS", "result": 5}"#
        );
        let mut bz = RESULT_PREFIX.to_vec();
        bz.extend_from_slice(b"application/x-bz2\x00");
        bz.extend_from_slice(&bz2(b"{}"));
        assert_eq!(&*strip_result_compression(&bz).unwrap(), b"{}");
        let plain = b"{\"a\": 1}";
        assert!(matches!(
            strip_result_compression(plain).unwrap(),
            Cow::Borrowed(_)
        ));
        let mut cut = RESULT_PREFIX.to_vec();
        cut.extend_from_slice(b"application/x-gzip");
        assert_eq!(
            strip_result_compression(&cut).unwrap_err().kind(),
            ErrorKind::Malformed
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decompress("gzip", &bytes);
            let _ = decompress("bzip2", &bytes);
            let _ = decompress("xz", &bytes);
            let mut xz = b"\xfd7zXZ\x00".to_vec();
            xz.extend_from_slice(&bytes);
            let _ = decompress("xz", &xz);
            let _ = strip_result_compression(&bytes);
            let mut p = RESULT_PREFIX.to_vec();
            p.extend_from_slice(&bytes);
            let _ = strip_result_compression(&p);
        }
    }
}
