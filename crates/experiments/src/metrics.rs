//! Classification metrics: accuracy, macro-F1, Cohen's kappa, per-class precision/recall, confusion.

use serde::{Deserialize, Serialize};

/// Metrics of one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Fraction correct.
    pub accuracy: f64,
    /// Unweighted mean of per-class F1 over the classes present in truth or prediction.
    pub macro_f1: f64,
    /// Cohen's kappa (agreement beyond chance).
    pub kappa: f64,
    /// Precision per class (0 when the class is never predicted).
    pub precision: Vec<f64>,
    /// Recall per class (0 when the class never occurs).
    pub recall: Vec<f64>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
    /// Mean cross-entropy, when known.
    pub loss: Option<f64>,
}

impl Metrics {
    /// Computes every metric from true and predicted class indices (`< classes`).
    #[must_use]
    pub fn from_predictions(truth: &[usize], pred: &[usize], classes: usize) -> Self {
        let mut confusion = vec![vec![0usize; classes]; classes];
        for (&t, &p) in truth.iter().zip(pred) {
            confusion[t.min(classes - 1)][p.min(classes - 1)] += 1;
        }
        let n = truth.len().max(1) as f64;
        let correct: usize = (0..classes).map(|k| confusion[k][k]).sum();
        let row = |k: usize| confusion[k].iter().sum::<usize>() as f64;
        let col = |k: usize| confusion.iter().map(|r| r[k]).sum::<usize>() as f64;
        let precision: Vec<f64> =
            (0..classes).map(|k| if col(k) > 0.0 { confusion[k][k] as f64 / col(k) } else { 0.0 }).collect();
        let recall: Vec<f64> =
            (0..classes).map(|k| if row(k) > 0.0 { confusion[k][k] as f64 / row(k) } else { 0.0 }).collect();
        let present: Vec<usize> = (0..classes).filter(|&k| row(k) > 0.0 || col(k) > 0.0).collect();
        let f1 = |k: usize| {
            let (p, r) = (precision[k], recall[k]);
            if p + r > 0.0 { 2.0 * p * r / (p + r) } else { 0.0 }
        };
        let macro_f1 = if present.is_empty() {
            0.0
        } else {
            present.iter().map(|&k| f1(k)).sum::<f64>() / present.len() as f64
        };
        let accuracy = correct as f64 / n;
        let expected: f64 = (0..classes).map(|k| row(k) * col(k)).sum::<f64>() / (n * n);
        let kappa =
            if (1.0 - expected).abs() < 1e-12 { 0.0 } else { (accuracy - expected) / (1.0 - expected) };
        Self { accuracy, macro_f1, kappa, precision, recall, confusion, loss: None }
    }
}

/// Mean and (population) standard deviation.
#[must_use]
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64;
    (m, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // Confusion rows [2 1 0] [0 2 1] [1 1 2]: accuracy 0.6, per-class F1 2/3, 4/7, 4/7, kappa 0.27/0.67.
        let truth = [0, 0, 1, 1, 2, 2, 2, 0, 1, 2];
        let pred = [0, 1, 1, 1, 2, 0, 2, 0, 2, 1];
        let m = Metrics::from_predictions(&truth, &pred, 5);
        assert!((m.accuracy - 0.6).abs() < 1e-12);
        let f1 = [2.0 / 3.0, 4.0 / 7.0, 4.0 / 7.0];
        assert!((m.macro_f1 - f1.iter().sum::<f64>() / 3.0).abs() < 1e-12);
        // p_o = 0.6; p_e = (3·3 + 3·4 + 4·3) / 100 = 0.33
        assert!((m.kappa - (0.6 - 0.33) / 0.67).abs() < 1e-12);
        assert_eq!(m.confusion[2], vec![1, 1, 2, 0, 0]);
        let perfect = Metrics::from_predictions(&truth, &truth, 5);
        assert_eq!((perfect.accuracy, perfect.macro_f1, perfect.kappa), (1.0, 1.0, 1.0));
    }
}
