//! Bucket checks and creation for `s3://` buckets, through aws-sdk-s3 (object_store cannot
//! create buckets or tell "missing bucket" from "bad credentials" clearly).

use anyhow::{Context, bail};
use aws_sdk_s3::error::SdkError;

/// The bucket name of an `s3://bucket/prefix` URL, or `None` for other schemes.
pub(crate) fn s3_bucket(url: &str) -> Option<&str> {
    url.strip_prefix("s3://")
        .map(|r| r.split('/').next().unwrap_or(r))
}

async fn client() -> aws_sdk_s3::Client {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err() {
        loader = loader.region(aws_config::Region::new("us-east-1"));
    }
    let conf = loader.load().await;
    let s3 = aws_sdk_s3::config::Builder::from(&conf)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(s3)
}

/// Check that the bucket of `url` exists and is accessible; create it when `create` is set.
/// Errors say which of the usual problems it is.
pub(crate) async fn ensure(url: &str, create: bool) -> anyhow::Result<()> {
    let Some(bucket) = s3_bucket(url) else {
        return Ok(());
    };
    if bucket.is_empty() {
        bail!("bucket URL {url:?} has no bucket name");
    }
    let c = client().await;
    let endpoint =
        std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "the default AWS endpoint".into());
    match c.head_bucket().bucket(bucket).send().await {
        Ok(_) => Ok(()),
        Err(SdkError::ServiceError(e)) => match e.raw().status().as_u16() {
            404 if create => {
                let _ = c
                    .create_bucket()
                    .bucket(bucket)
                    .send()
                    .await
                    .with_context(|| format!("creating bucket {bucket:?} at {endpoint}"))?;
                eprintln!("created bucket {bucket}");
                Ok(())
            }
            404 => bail!(
                "bucket {bucket:?} does not exist at {endpoint}: create it with `floe bucket init s3://{bucket}` or start with --create-bucket"
            ),
            401 | 403 => bail!(
                "access to bucket {bucket:?} at {endpoint} denied: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the profile) and the bucket policy"
            ),
            301 | 400 => bail!(
                "bucket {bucket:?} at {endpoint} answered {}: check AWS_REGION",
                e.raw().status().as_u16()
            ),
            s => bail!("checking bucket {bucket:?} at {endpoint}: HTTP {s}"),
        },
        Err(SdkError::DispatchFailure(e)) => {
            bail!("cannot reach {endpoint} to check bucket {bucket:?}: {e:?}")
        }
        Err(SdkError::TimeoutError(_)) => {
            bail!("timed out checking bucket {bucket:?} at {endpoint}")
        }
        Err(e) => {
            Err(anyhow::Error::new(e).context(format!("checking bucket {bucket:?} at {endpoint}")))
        }
    }
}
