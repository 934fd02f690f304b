//! The first fields of an H.264 sequence parameter set (ITU-T H.264 § 7.3.2.1.1): enough to name the
//! profile, chroma format, bit depth and frame/field coding of a clip before decoding it.

/// What a clip's header needs from its SPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub profile: &'static str,
    pub chroma_format: &'static str,
    pub bit_depth: u8,
    pub interlaced: bool,
}

/// Exp-Golomb reader over an RBSP (emulation-prevention bytes removed).
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn bit(&mut self) -> Result<u32, String> {
        let byte = self.data.get(self.pos / 8).ok_or("ends early")?;
        let b = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Ok(u32::from(b))
    }

    fn bits(&mut self, n: u32) -> Result<u32, String> {
        (0..n).try_fold(0, |a, _| Ok((a << 1) | self.bit()?))
    }

    fn ue(&mut self) -> Result<u32, String> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return Err("bad exp-Golomb code".into());
            }
        }
        Ok((1u32 << zeros) - 1 + self.bits(zeros)?)
    }

    fn se(&mut self) -> Result<i64, String> {
        let k = i64::from(self.ue()?);
        Ok(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }
}

fn unescape(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in nal {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

fn skip_scaling_list(r: &mut Bits<'_>, size: usize) -> Result<(), String> {
    let (mut last, mut next) = (8i64, 8i64);
    for _ in 0..size {
        if next != 0 {
            next = (last + r.se()? + 256) % 256;
        }
        if next != 0 {
            last = next;
        }
    }
    Ok(())
}

/// Parses an SPS NAL unit (with its one-byte NAL header).
pub(crate) fn parse(nal: &[u8]) -> Result<Header, String> {
    if nal.first().map(|b| b & 0x1f) != Some(7) {
        return Err("not a sequence parameter set NAL unit".into());
    }
    let rbsp = unescape(&nal[1..]);
    let mut r = Bits { data: &rbsp, pos: 0 };
    let profile_idc = r.bits(8)?;
    let constraints = r.bits(8)?;
    let _level = r.bits(8)?;
    let _id = r.ue()?;
    let (mut chroma, mut depth) = (1, 8);
    if matches!(profile_idc, 100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135) {
        chroma = r.ue()?;
        if chroma == 3 {
            r.bit()?;
        }
        depth = 8 + r.ue()?;
        let _depth_chroma = r.ue()?;
        r.bit()?; // qpprime_y_zero_transform_bypass
        if r.bit()? == 1 {
            for i in 0..if chroma == 3 { 12 } else { 8 } {
                if r.bit()? == 1 {
                    skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }
    let _log2_max_frame_num = r.ue()?;
    match r.ue()? {
        0 => {
            r.ue()?;
        }
        1 => {
            r.bit()?;
            r.se()?;
            r.se()?;
            for _ in 0..r.ue()?.min(255) {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.bit()?; // gaps_in_frame_num_value_allowed
    r.ue()?; // pic_width_in_mbs_minus1
    r.ue()?; // pic_height_in_map_units_minus1
    let frame_mbs_only = r.bit()? == 1;
    let profile = match (profile_idc, constraints & 0x40 != 0) {
        (66, true) => "constrained_baseline",
        (66, false) => "baseline",
        (77, _) => "main",
        (88, _) => "extended",
        (100, _) => "high",
        (110, _) => "high10",
        (122, _) => "high422",
        (244, _) => "high444",
        _ => "other",
    };
    let chroma_format = match chroma {
        0 => "4:0:0",
        1 => "4:2:0",
        2 => "4:2:2",
        _ => "4:4:4",
    };
    Ok(Header {
        profile,
        chroma_format,
        bit_depth: u8::try_from(depth).unwrap_or(u8::MAX),
        interlaced: !frame_mbs_only,
    })
}
