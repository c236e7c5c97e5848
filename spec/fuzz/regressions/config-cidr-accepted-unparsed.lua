return { listeners = { { address = "127.0.0.1:80", proxy_protocol = { trusted = { "999.1.1.1", ":::::" } } } }, policy = "p" }
