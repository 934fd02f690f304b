//! Paired statistics across subjects: the Wilcoxon signed-rank test and its rank-biserial effect size.

use serde::{Deserialize, Serialize};

/// The outcome of a paired Wilcoxon signed-rank test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Wilcoxon {
    /// Pairs with a non-zero difference (zeros are dropped, as in Wilcoxon's original method).
    pub n: usize,
    /// Sum of the ranks of positive differences.
    pub w_plus: f64,
    /// Sum of the ranks of negative differences.
    pub w_minus: f64,
    /// Two-sided p-value: exact when there are no tied ranks and `n ≤ 50`, else the normal approximation
    /// with tie correction.
    pub p_value: f64,
    /// Matched-pairs rank-biserial correlation `(W+ − W−) / (W+ + W−)`, in [−1, 1].
    pub effect_size: f64,
    /// Whether the p-value is exact.
    pub exact: bool,
}

/// Tests whether paired differences `d` are centred on zero.
#[must_use]
pub fn wilcoxon(d: &[f64]) -> Wilcoxon {
    let mut nz: Vec<f64> = d.iter().copied().filter(|x| *x != 0.0 && x.is_finite()).collect();
    nz.sort_by(|a, b| a.abs().total_cmp(&b.abs()));
    let n = nz.len();
    // Average ranks over ties of |d|.
    let mut ranks = vec![0.0; n];
    let mut ties = false;
    let mut tie_term = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && nz[j + 1].abs() == nz[i].abs() {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for r in &mut ranks[i..=j] {
            *r = avg;
        }
        let t = (j - i + 1) as f64;
        if t > 1.0 {
            ties = true;
            tie_term += t * t * t - t;
        }
        i = j + 1;
    }
    let w_plus: f64 = 0.0 + nz.iter().zip(&ranks).filter(|(x, _)| **x > 0.0).map(|(_, r)| r).sum::<f64>();
    let total = (n * (n + 1)) as f64 / 2.0;
    let w_minus = total - w_plus;
    let effect_size = if total > 0.0 { (w_plus - w_minus) / total } else { 0.0 };
    if n == 0 {
        return Wilcoxon { n, w_plus, w_minus, p_value: 1.0, effect_size, exact: true };
    }
    let exact = !ties && n <= 50;
    let p_value = if exact {
        // Distribution of W+ under H0: each rank is positive with probability 1/2.
        let max = n * (n + 1) / 2;
        let mut counts = vec![0f64; max + 1];
        counts[0] = 1.0;
        for k in 1..=n {
            for s in (k..=max).rev() {
                counts[s] += counts[s - k];
            }
        }
        let all = 2f64.powi(i32::try_from(n).unwrap_or(i32::MAX));
        let w = w_plus.min(w_minus).round() as usize;
        let tail: f64 = counts[..=w].iter().sum::<f64>() / all;
        (2.0 * tail).min(1.0)
    } else {
        let mean = total / 2.0;
        let var = (n * (n + 1) * (2 * n + 1)) as f64 / 24.0 - tie_term / 48.0;
        let z = (w_plus - mean).abs() / var.max(1e-12).sqrt();
        (2.0 * normal_sf(z)).min(1.0)
    };
    Wilcoxon { n, w_plus, w_minus, p_value, effect_size, exact }
}

/// Upper tail of the standard normal distribution.
fn normal_sf(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// Complementary error function (Numerical Recipes' Chebyshev fit, relative error < 1.2e-7).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_values_match_scipy() {
        // scipy.stats.wilcoxon([1, 2, 3, 4, 5, 6, 7, 8, -9, 10]): statistic 9, p = 0.064453125
        let r = wilcoxon(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, -9.0, 10.0]);
        assert!(r.exact);
        assert_eq!((r.w_plus, r.w_minus), (46.0, 9.0));
        assert!((r.p_value - 0.064_453_125).abs() < 1e-12, "{}", r.p_value);
        assert!((r.effect_size - 37.0 / 55.0).abs() < 1e-12);
        // All positive, n = 5: p = 2 / 32.
        assert!((wilcoxon(&[0.1, 0.2, 0.3, 0.4, 0.5]).p_value - 0.0625).abs() < 1e-12);
        assert_eq!(wilcoxon(&[0.0, 0.0]).p_value, 1.0);
    }

    #[test]
    fn ties_use_the_normal_approximation() {
        // scipy.stats.wilcoxon(d, method='approx', correction=False): statistic 3.5, p = 0.04080536406696605
        let r = wilcoxon(&[1.0, 1.0, 2.0, -2.0, 3.0, 3.0, 3.0, 4.0]);
        assert!(!r.exact);
        assert_eq!(r.w_minus, 3.5);
        assert!((r.p_value - 0.040_805_364_066_966).abs() < 1e-6, "{}", r.p_value);
        assert!((erfc(0.0) - 1.0).abs() < 1e-7 && (normal_sf(1.959_964) - 0.025).abs() < 1e-6);
    }
}
