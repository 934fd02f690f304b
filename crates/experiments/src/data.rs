//! Samples as tensors: the EEG, MFCC, video and label arrays of a set of windows.

use candle_core::{Device, Tensor};
use eav::dataset::Sample;
use eav::split::Standardizer;

use crate::error::{Error, Result};
use crate::model::{Inputs, Presence};

/// A set of windows held as tensors: EEG `(N, C, T)`, MFCC `(N, 13, F)` (when every window has audio),
/// labels `(N)` (`u32`).
#[derive(Debug, Clone)]
pub struct TensorSet {
    /// EEG windows.
    pub eeg: Tensor,
    /// MFCC windows (zeros in the rows of windows without audio).
    pub mfcc: Option<Tensor>,
    /// `(N)`: 1 for a window with audio, 0 for one without; `None` when every window has audio (or the set
    /// carries no audio at all).
    pub audio_present: Option<Tensor>,
    /// `(N)`: 1 for a window with EEG, 0 for one without; `None` when every window has EEG (as recorded:
    /// set only to evaluate a model with the EEG masked out).
    pub eeg_present: Option<Tensor>,
    /// Video windows `(N, frames, height, width)`, standardised (zeros in the rows of windows without
    /// video); `None` when the normalisation has no video or no window has it.
    pub video: Option<Tensor>,
    /// `(N)`: 1 for a window with video, 0 for one without; `None` when every window has video (or the set
    /// carries no video).
    pub video_present: Option<Tensor>,
    /// Class indices.
    pub labels: Tensor,
    /// Class indices, on the host.
    pub label_vec: Vec<usize>,
}

/// How EEG, MFCC and video windows are standardised: fitted on the training windows only.
#[derive(Debug, Clone)]
pub struct Normalisation {
    /// Per EEG channel.
    pub eeg: Standardizer,
    /// Per MFCC coefficient.
    pub mfcc: Option<Standardizer>,
    /// One mean and standard deviation over every luma value, and the video window's shape
    /// `(frames, height, width)` (when the data has video).
    pub video: Option<VideoNorm>,
}

/// The luma standardisation of video windows and their shape.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VideoNorm {
    /// Mean luma of the training windows.
    pub mean: f32,
    /// Standard deviation of the training windows' luma (at least 1e-6).
    pub std: f32,
    /// `(frames, height, width)` of a window.
    pub shape: (usize, usize, usize),
}

impl VideoNorm {
    /// Fits on the windows `train` of `samples` that have video; `None` when none has.
    #[must_use]
    pub fn fit(samples: &[Sample], train: &[usize], shape: (usize, usize, usize)) -> Option<Self> {
        let (mut sum, mut sq, mut n) = (0.0f64, 0.0f64, 0usize);
        for v in train.iter().filter_map(|&i| samples[i].video.as_ref()) {
            for &x in v {
                sum += f64::from(x);
                sq += f64::from(x) * f64::from(x);
            }
            n += v.len();
        }
        if n == 0 {
            return None;
        }
        let mean = sum / n as f64;
        let std = (sq / n as f64 - mean * mean).max(0.0).sqrt().max(1e-6);
        Some(Self { mean: mean as f32, std: std as f32, shape })
    }
}

impl Normalisation {
    /// No scaling: mean 0 and standard deviation 1 for every channel and coefficient.
    #[must_use]
    pub fn identity(channels: usize) -> Self {
        let unit = |n: usize| Standardizer { mean: vec![0.0; n], std: vec![1.0; n] };
        Self { eeg: unit(channels), mfcc: Some(unit(13)), video: None }
    }

    /// Fits on `train` windows of `samples`.
    #[must_use]
    pub fn fit(
        samples: &[Sample],
        train: &[usize],
        channels: usize,
        eeg_len: usize,
        mfcc_frames: usize,
    ) -> Self {
        let eeg = Standardizer::fit(samples, train, channels, eeg_len);
        let with_audio: Vec<usize> = train.iter().copied().filter(|&i| samples[i].mfcc.is_some()).collect();
        let mfcc = (!with_audio.is_empty()).then(|| {
            let as_eeg: Vec<Sample> = with_audio
                .iter()
                .map(|&i| Sample {
                    eeg: samples[i].mfcc.clone().unwrap_or_default(),
                    mfcc: None,
                    ..samples[i].clone()
                })
                .collect();
            let idx: Vec<usize> = (0..as_eeg.len()).collect();
            Standardizer::fit(&as_eeg, &idx, 13, mfcc_frames)
        });
        Self { eeg, mfcc, video: None }
    }

    /// The same with the video's normalisation fitted on `train` too (windows of `shape`).
    #[must_use]
    pub fn with_video(mut self, samples: &[Sample], train: &[usize], shape: (usize, usize, usize)) -> Self {
        self.video = VideoNorm::fit(samples, train, shape);
        self
    }
}

impl TensorSet {
    /// The windows `indices` of `samples`, standardised, on `device`.
    ///
    /// # Errors
    /// [`Error::Input`] for an empty selection; candle errors.
    pub fn build(
        samples: &[Sample],
        indices: &[usize],
        norm: &Normalisation,
        eeg_len: usize,
        mfcc_frames: usize,
        device: &Device,
    ) -> Result<Self> {
        let first = indices.first().ok_or_else(|| Error::Input("no windows selected".into()))?;
        let channels = samples[*first].eeg.len() / eeg_len;
        let mut eeg = Vec::with_capacity(indices.len() * channels * eeg_len);
        let mut mfcc = Vec::new();
        let with_audio = norm.mfcc.is_some() && indices.iter().any(|&i| samples[i].mfcc.is_some());
        let every = indices.iter().all(|&i| samples[i].mfcc.is_some());
        for &i in indices {
            let mut w = samples[i].eeg.clone();
            norm.eeg.apply(&mut w, eeg_len);
            eeg.extend_from_slice(&w);
            match (with_audio, &samples[i].mfcc, &norm.mfcc) {
                (true, Some(m), Some(st)) => {
                    let mut m = m.clone();
                    st.apply(&mut m, mfcc_frames);
                    mfcc.extend_from_slice(&m);
                }
                // A window without audio: a placeholder row, masked out by the model.
                (true, None, _) => mfcc.extend(std::iter::repeat_n(0.0, 13 * mfcc_frames)),
                _ => {}
            }
        }
        let n = indices.len();
        let (video, video_present) = Self::video_rows(samples, indices, norm.video.as_ref(), device)?;
        let label_vec: Vec<usize> = indices.iter().map(|&i| samples[i].emotion.index()).collect();
        let labels = Tensor::from_vec(label_vec.iter().map(|&l| l as u32).collect::<Vec<_>>(), n, device)?;
        Ok(Self {
            eeg: Tensor::from_vec(eeg, (n, channels, eeg_len), device)?,
            mfcc: if with_audio { Some(Tensor::from_vec(mfcc, (n, 13, mfcc_frames), device)?) } else { None },
            // A set without any audio (listening windows only) marks every window's audio absent.
            audio_present: if !every {
                let p: Vec<f32> =
                    indices.iter().map(|&i| if samples[i].mfcc.is_some() { 1.0 } else { 0.0 }).collect();
                Some(Tensor::from_vec(p, n, device)?)
            } else {
                None
            },
            eeg_present: None,
            video,
            video_present,
            labels,
            label_vec,
        })
    }

    /// The standardised video rows of `indices` and their presence mask (`None` when all have video).
    fn video_rows(
        samples: &[Sample],
        indices: &[usize],
        norm: Option<&VideoNorm>,
        device: &Device,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let Some(vn) = norm.filter(|_| indices.iter().any(|&i| samples[i].video.is_some())) else {
            return Ok((None, None));
        };
        let (frames, h, w) = vn.shape;
        let len = frames * h * w;
        let mut data = Vec::with_capacity(indices.len() * len);
        let mut present = Vec::with_capacity(indices.len());
        for &i in indices {
            match &samples[i].video {
                Some(v) if v.len() == len => {
                    data.extend(v.iter().map(|x| (x - vn.mean) / vn.std));
                    present.push(1.0f32);
                }
                Some(v) => {
                    return Err(Error::Input(format!(
                        "subject {} trial {} window {}: {} video values, expected {len} ({frames}×{h}×{w})",
                        samples[i].subject,
                        samples[i].trial,
                        samples[i].window,
                        v.len()
                    )));
                }
                None => {
                    data.extend(std::iter::repeat_n(0.0, len));
                    present.push(0.0);
                }
            }
        }
        let n = indices.len();
        let every = !present.contains(&0.0);
        Ok((
            Some(Tensor::from_vec(data, (n, frames, h, w), device)?),
            if every { None } else { Some(Tensor::from_vec(present, n, device)?) },
        ))
    }

    /// A checksum of the windows' data and labels (sums of the tensors, in hex), to tell sets apart.
    ///
    /// # Errors
    /// candle errors.
    pub fn checksum(&self) -> Result<String> {
        let sum = |t: &Tensor| -> Result<u64> {
            Ok(t.to_dtype(candle_core::DType::F64)?.sum_all()?.to_scalar::<f64>()?.to_bits())
        };
        let mfcc = self.mfcc.as_ref().map(sum).transpose()?.unwrap_or(0);
        let labels: usize = self.label_vec.iter().enumerate().map(|(i, l)| (i + 1) * (l + 1)).sum();
        let base = format!("{:x}-{mfcc:x}-{labels:x}", sum(&self.eeg)?);
        Ok(match &self.video {
            Some(v) => format!("{base}-{:x}", sum(v)?),
            None => base,
        })
    }

    /// Number of windows.
    #[must_use]
    pub fn len(&self) -> usize {
        self.label_vec.len()
    }

    /// Whether the set is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.label_vec.is_empty()
    }

    /// Which of the windows at `idx` have EEG and audio.
    ///
    /// # Errors
    /// candle errors.
    pub fn presence(&self, idx: &[u32]) -> Result<Presence> {
        let ids = Tensor::new(idx, self.eeg.device())?;
        let pick = |p: &Option<Tensor>| p.as_ref().map(|p| p.index_select(&ids, 0)).transpose();
        Ok(Presence {
            eeg: pick(&self.eeg_present)?,
            audio: pick(&self.audio_present)?,
            video: pick(&self.video_present)?,
        })
    }

    /// The same windows with `modality` absent from every one (its data kept, masked out).
    ///
    /// # Errors
    /// candle errors.
    pub fn without(&self, modality: core_types::Modality) -> Result<Self> {
        let zeros = Some(Tensor::zeros(self.len(), candle_core::DType::F32, self.eeg.device())?);
        let mut out = self.clone();
        match modality {
            core_types::Modality::Eeg => out.eeg_present = zeros,
            core_types::Modality::Audio => out.audio_present = zeros,
            core_types::Modality::Video => out.video_present = zeros,
        }
        Ok(out)
    }

    /// Every window in order, in batches of `size` (the last one smaller), as evaluation reads a set.
    pub fn in_order(&self, size: usize) -> impl Iterator<Item = Result<Batch>> + '_ {
        let ids: Vec<u32> = (0..u32::try_from(self.len()).unwrap_or(u32::MAX)).collect();
        let chunks: Vec<Vec<u32>> = ids.chunks(size.max(1)).map(<[u32]>::to_vec).collect();
        chunks.into_iter().map(move |idx| self.batch(&idx))
    }

    /// The windows at `idx` (a batch), with their presence masks.
    ///
    /// # Errors
    /// candle errors.
    pub fn batch(&self, idx: &[u32]) -> Result<Batch> {
        let ids = Tensor::new(idx, self.eeg.device())?;
        let pick = |t: &Option<Tensor>| t.as_ref().map(|t| t.index_select(&ids, 0)).transpose();
        Ok(Batch {
            eeg: self.eeg.index_select(&ids, 0)?,
            mfcc: pick(&self.mfcc)?,
            video: pick(&self.video)?,
            labels: self.labels.index_select(&ids, 0)?,
            presence: self.presence(idx)?,
        })
    }
}

/// One batch of a [`TensorSet`].
#[derive(Debug, Clone)]
pub struct Batch {
    /// EEG `(B, C, T)`.
    pub eeg: Tensor,
    /// MFCC `(B, 13, F)`.
    pub mfcc: Option<Tensor>,
    /// Video `(B, frames, H, W)`.
    pub video: Option<Tensor>,
    /// Class indices `(B)`.
    pub labels: Tensor,
    /// Which samples have each modality.
    pub presence: Presence,
}

impl Batch {
    /// The number of windows.
    #[must_use]
    pub fn len(&self) -> usize {
        self.eeg.dims().first().copied().unwrap_or(0)
    }

    /// Whether the batch holds no window.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The model inputs.
    #[must_use]
    pub fn inputs(&self) -> Inputs<'_> {
        Inputs { eeg: &self.eeg, audio: self.mfcc.as_ref(), video: self.video.as_ref() }
    }
}
