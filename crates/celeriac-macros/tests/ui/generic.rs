#[celeriac::task]
async fn echo<T: serde::Serialize + serde::de::DeserializeOwned + Send + 'static>(x: T) -> T {
    x
}

fn main() {}
