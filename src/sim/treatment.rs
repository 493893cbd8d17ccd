//! Treatment effects in a closed loop (below).
