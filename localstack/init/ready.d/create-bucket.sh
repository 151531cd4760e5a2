#!/bin/sh
# LocalStack init hook (runs when LocalStack is ready): create Floe's test bucket.
awslocal s3 mb s3://floe-test || true
