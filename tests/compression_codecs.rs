//! The compression codecs the service supports are compiled into librdkafka. No broker needed:
//! librdkafka checks `compression.codec` / `compression.type` when a client is created, and
//! refuses a codec it was built without ("libzstd not available at build time"), which is what
//! happened to zstd before the `rdkafka` feature `zstd` was enabled.

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::BaseProducer;

const CODECS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];

fn producer(property: &str, codec: &str) -> Result<BaseProducer, KafkaError> {
    // Nothing listens on port 1; creating the client does not connect.
    ClientConfig::new().set("bootstrap.servers", "127.0.0.1:1").set(property, codec).create()
}

#[test]
fn librdkafka_is_built_with_every_codec() {
    // The same build flags decide what the consumer can decompress, so this covers input too.
    let features = ClientConfig::new().create_native_config().unwrap().get("builtin.features").unwrap();
    let features: Vec<&str> = features.split(',').collect();
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        assert!(features.contains(&codec), "librdkafka built without {codec}: {features:?}");
    }
}

#[test]
fn a_producer_accepts_every_supported_codec() {
    for property in ["compression.codec", "compression.type"] {
        for codec in CODECS {
            if let Err(e) = producer(property, codec) {
                panic!("{property} = {codec}: {e}");
            }
        }
    }
}

/// The check above can fail: a codec librdkafka does not know is refused at creation.
#[test]
fn a_producer_refuses_an_unknown_codec() {
    for property in ["compression.codec", "compression.type"] {
        for codec in ["brotli", "zstandard", "lzma"] {
            match producer(property, codec) {
                Err(KafkaError::ClientConfig(_, msg, key, value)) => {
                    assert_eq!((key.as_str(), value.as_str()), (property, codec), "{msg}");
                }
                Err(other) => panic!("{property} = {codec}: unexpected error {other}"),
                Ok(_) => panic!("{property} = {codec} was accepted"),
            }
        }
    }
}
