//! See [`super`]. (Being written.)
