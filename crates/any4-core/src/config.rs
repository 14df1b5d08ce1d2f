//! The quantization configuration: format, group size, scaling, k-means options, parameter dtype.
//!
//! Every type here is `Copy + serde` and valid by construction: fallible setters return
//! [`Result`], and deserialization goes through the same checks (`#[serde(try_from)]`), so a
//! config read from a checkpoint can never hold a group size or tolerance the code cannot handle.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The numeric format: which 16-entry (or 2^N-entry) table the 4-bit codes index.
///
/// All formats share one storage layout (codes + per-row table + per-group scale and zero), so a
/// single kernel family serves them; they differ only in how the table is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Learned 16-entry table per row (the paper's any4).
    Any4,
    /// Learned 8-entry table per row.
    Any3,
    /// Learned 4-entry table per row.
    Any2,
    /// Uniform grid: asymmetric round-to-nearest 4-bit integers.
    Int4,
    /// The 16 NormalFloat values of QLoRA (fixed table).
    Nf4,
    /// The 16 e2m1 values {0, ±0.5, ±1, ±1.5, ±2, ±3, ±4, ±6} (fixed table; plain OCP e2m1, not
    /// bitsandbytes' FP4 variant).
    Fp4,
}

impl Format {
    /// Every format, in the order reports list them.
    pub const ALL: [Format; 6] = [
        Format::Int4,
        Format::Fp4,
        Format::Nf4,
        Format::Any4,
        Format::Any3,
        Format::Any2,
    ];

    /// Bits of information per code (the storage is always 4-bit nibbles).
    pub fn bits(self) -> u8 {
        match self {
            Format::Any3 => 3,
            Format::Any2 => 2,
            _ => 4,
        }
    }

    /// Number of table entries the codes can take: `2^bits`.
    pub fn levels(self) -> usize {
        1 << self.bits()
    }

    /// Whether the table is learned per row (anyN) rather than fixed.
    pub fn is_learned(self) -> bool {
        matches!(self, Format::Any4 | Format::Any3 | Format::Any2)
    }

    /// Rows of the stored table of a `rows`-row matrix: one table per row for learned formats,
    /// one shared table for the fixed ones.
    pub fn table_rows(self, rows: usize) -> usize {
        if self.is_learned() { rows } else { 1 }
    }

    /// The scaling each format is normally used with: asymmetric min/max for int4 and anyN,
    /// symmetric absmax for nf4 and fp4 (as in QLoRA / bitsandbytes).
    pub fn default_scaling(self) -> Scaling {
        match self {
            Format::Nf4 | Format::Fp4 => Scaling::Symmetric,
            _ => Scaling::Asymmetric,
        }
    }

    /// Lower-case name used on the command line and in checkpoints.
    pub fn name(self) -> &'static str {
        match self {
            Format::Any4 => "any4",
            Format::Any3 => "any3",
            Format::Any2 => "any2",
            Format::Int4 => "int4",
            Format::Nf4 => "nf4",
            Format::Fp4 => "fp4",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Format::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| Error::UnknownName {
                kind: "format",
                name: s.to_string(),
                expected: "any4, any3, any2, int4, nf4, fp4",
            })
    }
}

/// How each group's weights are mapped onto the table's domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scaling {
    /// `[min, max]` of the group maps onto the table's full range; `zero` is the offset.
    Asymmetric,
    /// `[-absmax, absmax]` maps onto `[-L, L]`; `zero = 0`.
    Symmetric,
}

impl FromStr for Scaling {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "asymmetric" | "asym" => Ok(Scaling::Asymmetric),
            "symmetric" | "sym" => Ok(Scaling::Symmetric),
            _ => Err(Error::UnknownName {
                kind: "scaling",
                name: s.to_string(),
                expected: "asymmetric, symmetric",
            }),
        }
    }
}

/// Number of consecutive input channels sharing one scale and zero.
///
/// Supported: 32, 64, 128 (default), 256, 512, 1024, or the whole row. When the input dimension
/// `K` is not a multiple of the group size, each row's **last group is shorter** (`K mod G`
/// channels); its scale and zero are computed over those channels only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "GroupSizeRepr", into = "GroupSizeRepr")]
pub struct GroupSize(u32);

impl GroupSize {
    /// One group per row (no grouping).
    pub const PER_ROW: GroupSize = GroupSize(0);
    /// The default group size of the paper and of most 4-bit formats.
    pub const G128: GroupSize = GroupSize(128);
    /// Accepted explicit sizes.
    pub const SUPPORTED: [usize; 6] = [32, 64, 128, 256, 512, 1024];

    /// A group of `size` channels; refuses sizes the kernels do not handle.
    pub fn new(size: usize) -> Result<Self> {
        if Self::SUPPORTED.contains(&size) {
            Ok(GroupSize(size as u32))
        } else {
            Err(Error::UnsupportedGroupSize(size))
        }
    }

    /// `None` for per-row grouping, else the group size.
    pub fn size(self) -> Option<usize> {
        (self.0 != 0).then_some(self.0 as usize)
    }

    /// Effective group length for a row of `k` channels (`k` for per-row).
    pub fn len_for(self, k: usize) -> usize {
        self.size().map_or(k, |g| g.min(k))
    }

    /// Number of groups in a row of `k` channels (the last one may be short).
    pub fn groups_for(self, k: usize) -> usize {
        k.div_ceil(self.len_for(k).max(1))
    }
}

impl Default for GroupSize {
    fn default() -> Self {
        GroupSize::G128
    }
}

impl fmt::Display for GroupSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.size() {
            Some(g) => write!(f, "{g}"),
            None => f.write_str("per-row"),
        }
    }
}

impl FromStr for GroupSize {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "row" | "per-row" | "perrow" | "none" => Ok(GroupSize::PER_ROW),
            other => other
                .parse::<usize>()
                .map_err(|_| Error::UnknownName {
                    kind: "group size",
                    name: s.to_string(),
                    expected: "32, 64, 128, 256, 512, 1024, per-row",
                })
                .and_then(GroupSize::new),
        }
    }
}

impl TryFrom<usize> for GroupSize {
    type Error = Error;
    fn try_from(size: usize) -> Result<Self> {
        GroupSize::new(size)
    }
}

/// Serialized form: a number, or the string `"per-row"`.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum GroupSizeRepr {
    Size(usize),
    Name(String),
}

impl TryFrom<GroupSizeRepr> for GroupSize {
    type Error = Error;
    fn try_from(r: GroupSizeRepr) -> Result<Self> {
        match r {
            GroupSizeRepr::Size(n) => GroupSize::new(n),
            GroupSizeRepr::Name(s) => s.parse(),
        }
    }
}

impl From<GroupSize> for GroupSizeRepr {
    fn from(g: GroupSize) -> Self {
        match g.size() {
            Some(n) => GroupSizeRepr::Size(n),
            None => GroupSizeRepr::Name("per-row".into()),
        }
    }
}

/// Precision in which scales, zeros and tables are stored (on disk and on the device).
///
/// Quantization rounds them to this precision *before* assigning codes, so the stored model is
/// exactly what was optimised and every backend dequantizes to the same values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamDtype {
    /// 32-bit floats (exact; 3× the parameter bytes of f16).
    F32,
    /// IEEE half: 10 mantissa bits, enough for tables on `[0, 15]` to 1/128.
    #[default]
    F16,
    /// bfloat16 (the reference's GPU choice): same range as f32, 7 mantissa bits.
    Bf16,
}

impl ParamDtype {
    /// Round `v` to this precision (round-to-nearest-even), returned as f32.
    pub fn round(self, v: f32) -> f32 {
        match self {
            ParamDtype::F32 => v,
            ParamDtype::F16 => half::f16::from_f32(v).to_f32(),
            ParamDtype::Bf16 => half::bf16::from_f32(v).to_f32(),
        }
    }

    /// Smallest positive value this precision can hold (used to keep scales non-zero).
    pub fn min_positive(self) -> f32 {
        match self {
            ParamDtype::F32 => f32::MIN_POSITIVE,
            ParamDtype::F16 => half::f16::from_bits(1).to_f32(),
            ParamDtype::Bf16 => half::bf16::from_bits(1).to_f32(),
        }
    }

    /// Bits per stored value.
    pub fn bits(self) -> u32 {
        match self {
            ParamDtype::F32 => 32,
            _ => 16,
        }
    }
}

impl FromStr for ParamDtype {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(ParamDtype::F32),
            "f16" | "float16" | "half" => Ok(ParamDtype::F16),
            "bf16" | "bfloat16" => Ok(ParamDtype::Bf16),
            _ => Err(Error::UnknownName {
                kind: "dtype",
                name: s.to_string(),
                expected: "f32, f16, bf16",
            }),
        }
    }
}

/// How the learned table is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Solver {
    /// Lloyd iterations from a seeded initialisation (the paper's method).
    #[default]
    Lloyd,
    /// Globally optimal weighted 1-D k-means by dynamic programming over the sorted values.
    Exact,
}

impl FromStr for Solver {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "lloyd" | "kmeans" => Ok(Solver::Lloyd),
            "exact" | "dp" => Ok(Solver::Exact),
            _ => Err(Error::UnknownName {
                kind: "k-means solver",
                name: s.to_string(),
                expected: "lloyd, exact",
            }),
        }
    }
}

impl fmt::Display for Solver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Solver::Lloyd => "lloyd",
            Solver::Exact => "exact",
        })
    }
}

/// Initial centroids for Lloyd (the paper's ablation: k-means++ is best).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Init {
    /// Greedy weighted k-means++ (D² sampling, 2 + ln k local trials).
    #[default]
    KMeansPlusPlus,
    /// `k` distinct points sampled in proportion to their weight.
    Random,
    /// The uniform int grid spread over the data range.
    Uniform,
    /// The NF4 values mapped onto the data range.
    Nf4,
}

/// Options of the weighted 1-D k-means that learns anyN tables.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "KMeansRepr", into = "KMeansRepr")]
pub struct KMeansConfig {
    solver: Solver,
    init: Init,
    max_iter: u32,
    tol: f32,
    seed: u64,
}

impl Default for KMeansConfig {
    fn default() -> Self {
        KMeansConfig {
            solver: Solver::Lloyd,
            init: Init::KMeansPlusPlus,
            max_iter: 300,
            tol: 1e-4,
            seed: 0,
        }
    }
}

impl KMeansConfig {
    /// The solver.
    pub fn solver(&self) -> Solver {
        self.solver
    }
    /// The Lloyd initialisation.
    pub fn init(&self) -> Init {
        self.init
    }
    /// Maximum Lloyd iterations.
    pub fn max_iter(&self) -> u32 {
        self.max_iter
    }
    /// Convergence tolerance, relative to the (weighted) variance of the row's values.
    pub fn tol(&self) -> f32 {
        self.tol
    }
    /// Base seed; row `i` uses a seed derived from `(seed, i)`, so results do not depend on
    /// the number of threads.
    pub fn seed(&self) -> u64 {
        self.seed
    }
    /// Set the solver.
    pub fn with_solver(mut self, solver: Solver) -> Self {
        self.solver = solver;
        self
    }
    /// Set the Lloyd initialisation.
    pub fn with_init(mut self, init: Init) -> Self {
        self.init = init;
        self
    }
    /// Set the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    /// Set the maximum number of Lloyd iterations (at least 1).
    pub fn with_max_iter(mut self, max_iter: u32) -> Result<Self> {
        if max_iter == 0 {
            return Err(Error::InvalidKMeans("max_iter must be at least 1"));
        }
        self.max_iter = max_iter;
        Ok(self)
    }
    /// Set the relative tolerance (finite, ≥ 0).
    pub fn with_tol(mut self, tol: f32) -> Result<Self> {
        if !tol.is_finite() || tol < 0.0 {
            return Err(Error::InvalidKMeans("tol must be finite and >= 0"));
        }
        self.tol = tol;
        Ok(self)
    }
}

#[derive(Serialize, Deserialize)]
struct KMeansRepr {
    solver: Solver,
    init: Init,
    max_iter: u32,
    tol: f32,
    seed: u64,
}

impl TryFrom<KMeansRepr> for KMeansConfig {
    type Error = Error;
    fn try_from(r: KMeansRepr) -> Result<Self> {
        KMeansConfig::default()
            .with_solver(r.solver)
            .with_init(r.init)
            .with_seed(r.seed)
            .with_max_iter(r.max_iter)?
            .with_tol(r.tol)
    }
}

impl From<KMeansConfig> for KMeansRepr {
    fn from(c: KMeansConfig) -> Self {
        KMeansRepr {
            solver: c.solver,
            init: c.init,
            max_iter: c.max_iter,
            tol: c.tol,
            seed: c.seed,
        }
    }
}

/// Everything that decides how one matrix is quantized.
///
/// ```
/// use any4_core::{Any4Config, Format, GroupSize, Scaling, Solver};
///
/// let cfg = Any4Config::new(Format::Any4)
///     .with_group_size(GroupSize::new(64)?)
///     .with_solver(Solver::Exact);
/// assert_eq!(cfg.group_size().size(), Some(64));
/// assert_eq!(cfg.scaling(), Scaling::Asymmetric);
///
/// // nf4 defaults to symmetric absmax scaling, as in QLoRA.
/// assert_eq!(Any4Config::new(Format::Nf4).scaling(), Scaling::Symmetric);
///
/// // Invalid choices are refused up front.
/// assert!(GroupSize::new(100).is_err());
/// assert!("any5".parse::<Format>().is_err());
/// # Ok::<(), any4_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Any4Config {
    format: Format,
    group_size: GroupSize,
    scaling: Scaling,
    kmeans: KMeansConfig,
    param_dtype: ParamDtype,
}

impl Default for Any4Config {
    fn default() -> Self {
        Any4Config::new(Format::Any4)
    }
}

impl Any4Config {
    /// A config for `format` with its natural scaling, group 128, default k-means, f16 parameters.
    pub fn new(format: Format) -> Self {
        Any4Config {
            format,
            group_size: GroupSize::G128,
            scaling: format.default_scaling(),
            kmeans: KMeansConfig::default(),
            param_dtype: ParamDtype::F16,
        }
    }
    /// The format.
    pub fn format(&self) -> Format {
        self.format
    }
    /// The group size.
    pub fn group_size(&self) -> GroupSize {
        self.group_size
    }
    /// The scaling.
    pub fn scaling(&self) -> Scaling {
        self.scaling
    }
    /// The k-means options (used by learned formats only).
    pub fn kmeans(&self) -> &KMeansConfig {
        &self.kmeans
    }
    /// The precision of tables, scales and zeros.
    pub fn param_dtype(&self) -> ParamDtype {
        self.param_dtype
    }
    /// Storage of a `[rows, cols]` matrix in this config, in bits per weight: 4-bit codes plus,
    /// in the parameter dtype (`p` bits), a scale and a zero per group and the table entries:
    /// `4 + (2·rows·groups + 16·table_rows) · p / (rows·cols)` — 4.3125 for per-row any4 tables
    /// at `cols` = 4096, G = 128 in 16-bit. Bias and dense layers are not counted.
    pub fn bits_per_weight(&self, [rows, cols]: [usize; 2]) -> f64 {
        let weights = (rows * cols) as f64;
        let params = 2 * rows * self.group_size.groups_for(cols)
            + crate::TABLE_LEN * self.format.table_rows(rows);
        4.0 + params as f64 * f64::from(self.param_dtype.bits()) / weights
    }
    /// Set the group size.
    pub fn with_group_size(mut self, g: GroupSize) -> Self {
        self.group_size = g;
        self
    }
    /// Set the scaling.
    pub fn with_scaling(mut self, s: Scaling) -> Self {
        self.scaling = s;
        self
    }
    /// Set all k-means options.
    pub fn with_kmeans(mut self, k: KMeansConfig) -> Self {
        self.kmeans = k;
        self
    }
    /// Set the k-means solver.
    pub fn with_solver(mut self, s: Solver) -> Self {
        self.kmeans = self.kmeans.with_solver(s);
        self
    }
    /// Set the k-means seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.kmeans = self.kmeans.with_seed(seed);
        self
    }
    /// Set the parameter precision.
    pub fn with_param_dtype(mut self, d: ParamDtype) -> Self {
        self.param_dtype = d;
        self
    }
}
