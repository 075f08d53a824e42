#[derive(Debug)]
struct NotAnError;

#[celeriac::task]
async fn fails() -> Result<u8, NotAnError> {
    Err(NotAnError)
}

fn main() {}
