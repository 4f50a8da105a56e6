use std::hint::black_box;

#[inline(never)]
fn parse_header(v: &[u8], i: usize) -> u8 {
    v[i]
}

fn main() {
    let v = vec![1u8, 2, 3];
    let i = black_box(std::env::args().count() + 6);
    println!("{}", parse_header(&v, i));
}
