module coredump-detector/test-crasher-go

go 1.22
