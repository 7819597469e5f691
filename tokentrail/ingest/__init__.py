"""Getting events in: files, stdin and Kafka, through one pipeline into the store."""
