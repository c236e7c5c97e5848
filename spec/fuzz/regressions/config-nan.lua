return { listeners = { { address = "127.0.0.1:80" } }, policy = "p", limits = { header_timeout = 0/0 } }
