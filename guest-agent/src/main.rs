fn main() {
    eprintln!("deskd-agent: not built yet");
    std::process::exit(2);
}
