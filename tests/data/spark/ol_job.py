"""A local Spark job with the OpenLineage listener, for the registry's tests.

    python ol_job.py succeed|fail BASE_DIR

The listener's settings come from the environment: OL_JAR (the
openlineage-spark jar), OL_URL (the receiver), OL_COMPRESSION (optional).
``succeed`` writes a small CSV, reads it back, aggregates and writes
parquet; ``fail`` writes parquet, then a Python UDF raises during the
second write, and the script exits 1.
"""

import os
import shutil
import sys

from pyspark.sql import SparkSession, functions
from pyspark.sql.types import DoubleType


def session(name: str) -> SparkSession:
    builder = (SparkSession.builder.master("local[1]").appName(name)
               .config("spark.jars", os.environ["OL_JAR"])
               .config("spark.extraListeners",
                       "io.openlineage.spark.agent.OpenLineageSparkListener")
               .config("spark.openlineage.namespace", "pudato-test-spark")
               .config("spark.openlineage.transport.type", "http")
               .config("spark.openlineage.transport.url", os.environ["OL_URL"])
               .config("spark.openlineage.transport.endpoint", "/api/v1/lineage")
               .config("spark.ui.enabled", "false")
               .config("spark.sql.shuffle.partitions", "1"))
    if os.environ.get("OL_COMPRESSION"):
        builder = builder.config("spark.openlineage.transport.compression",
                                 os.environ["OL_COMPRESSION"])
    return builder.getOrCreate()


def succeed(spark: SparkSession, base: str) -> None:
    spark.createDataFrame([(1, "eng", 5000.0), (2, "eng", 6100.0), (3, "ops", 4200.0)],
                          "emp_id INT, dept STRING, salary DOUBLE") \
        .write.mode("overwrite").option("header", True).csv(f"{base}/raw/employees")
    employees = spark.read.option("header", True).schema(
        "emp_id INT, dept STRING, salary DOUBLE").csv(f"{base}/raw/employees")
    employees.groupBy("dept").agg(functions.sum("salary").alias("budget")) \
        .write.mode("overwrite").parquet(f"{base}/mart/dept_budget")


def fail(spark: SparkSession, base: str) -> None:
    spark.createDataFrame([(1, 10.0, "EUR"), (2, 20.0, "XXX")],
                          "id INT, amount DOUBLE, ccy STRING") \
        .write.mode("overwrite").parquet(f"{base}/raw/payments")

    @functions.udf(DoubleType())
    def to_usd(amount: float, ccy: str) -> float:
        rates = {"EUR": 1.1, "USD": 1.0}
        if ccy not in rates:
            raise ValueError(f"no FX rate for currency {ccy!r}")
        return amount * rates[ccy]

    payments = spark.read.schema("id INT, amount DOUBLE, ccy STRING").parquet(
        f"{base}/raw/payments")
    payments.withColumn("usd", to_usd("amount", "ccy")) \
        .write.mode("overwrite").parquet(f"{base}/mart/payments_usd")


if __name__ == "__main__":
    what, base = sys.argv[1], sys.argv[2]
    shutil.rmtree(base, ignore_errors=True)
    spark = session(f"pudato_test_{what}")
    try:
        {"succeed": succeed, "fail": fail}[what](spark, base)
    finally:
        spark.stop()
