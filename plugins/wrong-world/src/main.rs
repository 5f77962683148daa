//! A WASI command component: valid WebAssembly, but not a baton plugin.

fn main() {
    println!("I am not a baton plugin");
}
