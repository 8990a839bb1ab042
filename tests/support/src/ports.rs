use std::net::TcpListener;

use crate::Error;

/// `n` distinct free loopback ports. All listeners are held until every port is chosen so the
/// kernel cannot hand out the same one twice; another process may still take one before our
/// server binds it, which start-up detects and retries.
pub(crate) fn free_ports(n: usize) -> Result<Vec<u16>, Error> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind(("127.0.0.1", 0)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::io("binding a free loopback port"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::io("reading a bound port"))
}
