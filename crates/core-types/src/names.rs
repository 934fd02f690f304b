//! The enums every crate shares, each with exactly one spelling for serde, clap, `Display` and `FromStr`.

use crate::error::ParseEnumError;

/// Defines a fieldless enum whose variants have one text spelling each, used by `Display`, `FromStr`,
/// serde and clap alike.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $kind:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
            serde::Serialize, serde::Deserialize, clap::ValueEnum,
        )]
        #[serde(rename_all = "snake_case")]
        #[value(rename_all = "snake_case")]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The one spelling of this variant.
            #[must_use]
            pub const fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text,)+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = ParseEnumError;

            /// Parses the spelling of [`Self::as_str`], ignoring ASCII case.
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str().eq_ignore_ascii_case(s))
                    .ok_or_else(|| ParseEnumError {
                        kind: $kind,
                        got: s.to_owned(),
                        valid: Self::ALL.iter().map(|v| v.as_str()).collect(),
                    })
            }
        }
    };
}

named_enum! {
    /// The five EAV emotion classes, in the dataset's code order (the label row is `2·index + speaking`).
    Emotion, "emotion" {
        /// Class 0.
        Neutral = "neutral",
        /// Class 1.
        Sadness = "sadness",
        /// Class 2.
        Anger = "anger",
        /// Class 3.
        Happiness = "happiness",
        /// Class 4.
        Calmness = "calmness",
    }
}

impl Emotion {
    /// Number of classes.
    pub const COUNT: usize = 5;

    /// The class index used by labels and logits (Neutral 0 … Calmness 4).
    #[must_use]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The class with this index, or `None` when `index ≥ 5`.
    #[must_use]
    pub fn from_index(index: usize) -> Option<Self> {
        Self::ALL.get(index).copied()
    }
}

named_enum! {
    /// A recorded signal the models can read.
    Modality, "modality" {
        /// Electroencephalography.
        Eeg = "eeg",
        /// Speech audio (as MFCC features).
        Audio = "audio",
        /// Face video.
        Video = "video",
    }
}

impl Modality {
    /// The one-letter tag used in tensor names of pairwise layers (`attn_e2a`: EEG attends to audio).
    #[must_use]
    pub const fn tag(self) -> char {
        match self {
            Self::Eeg => 'e',
            Self::Audio => 'a',
            Self::Video => 'v',
        }
    }
}

named_enum! {
    /// How the modalities are combined.
    #[derive(Default)]
    FusionMode, "fusion mode" {
        /// Concatenate the scaled latents and project (the default).
        #[default]
        Concat = "concat",
        /// Bidirectional multi-head cross-attention between the two latents, then a learned blend.
        CrossAttention = "cross_attention",
        /// A sigmoid gate over the concatenated latents, then a projection.
        Gated = "gated",
        /// A cross-modal transformer over the encoders' time steps on one clock.
        Temporal = "temporal",
        /// A learned per-sample router that mixes the other four modes.
        Adaptive = "adaptive",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;
    use proptest::prelude::*;
    use std::str::FromStr;

    fn round_trip<T>(all: &[T])
    where
        T: Copy + PartialEq + std::fmt::Debug + std::fmt::Display + FromStr + ValueEnum,
        T: serde::Serialize + serde::de::DeserializeOwned,
        <T as FromStr>::Err: std::fmt::Debug,
    {
        for &v in all {
            let text = v.to_string();
            assert_eq!(text.parse::<T>().unwrap(), v);
            assert_eq!(text.to_uppercase().parse::<T>().unwrap(), v);
            let json = serde_json::to_string(&v).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<T>(&json).unwrap(), v);
            let clap_name = v.to_possible_value().unwrap().get_name().to_owned();
            assert_eq!(clap_name, text);
            assert_eq!(<T as ValueEnum>::from_str(&clap_name, false).unwrap(), v);
        }
    }

    #[test]
    fn every_variant_has_one_spelling() {
        round_trip(Emotion::ALL);
        round_trip(Modality::ALL);
        round_trip(FusionMode::ALL);
        assert_eq!(FusionMode::CrossAttention.to_string(), "cross_attention");
        assert_eq!(FusionMode::default(), FusionMode::Concat);
    }

    #[test]
    fn emotion_indices_follow_the_eav_code_order() {
        let names: Vec<_> = Emotion::ALL.iter().map(|e| (e.index(), e.as_str())).collect();
        assert_eq!(names, [(0, "neutral"), (1, "sadness"), (2, "anger"), (3, "happiness"), (4, "calmness")]);
        assert_eq!(Emotion::from_index(5), None);
    }

    #[test]
    fn unknown_names_list_the_valid_ones() {
        let err = <FusionMode as FromStr>::from_str("cross-attention").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("cross-attention"), "{msg}");
        assert!(msg.contains("concat, cross_attention, gated"), "{msg}");
        assert!(serde_json::from_str::<FusionMode>("\"attention\"").is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_text_parses_only_to_a_known_spelling(s in "\\PC{0,20}") {
            if let Ok(m) = <FusionMode as FromStr>::from_str(&s) {
                prop_assert!(m.as_str().eq_ignore_ascii_case(&s));
            }
            if let Ok(e) = <Emotion as FromStr>::from_str(&s) {
                prop_assert!(e.as_str().eq_ignore_ascii_case(&s));
            }
            if let Ok(m) = <Modality as FromStr>::from_str(&s) {
                prop_assert!(m.as_str().eq_ignore_ascii_case(&s));
            }
        }

        #[test]
        fn any_emotion_index_round_trips(i in 0usize..10) {
            match Emotion::from_index(i) {
                Some(e) => prop_assert_eq!(e.index(), i),
                None => prop_assert!(i >= Emotion::COUNT),
            }
        }
    }
}
