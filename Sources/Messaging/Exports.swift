// The message contracts, topology names and URL the client carries: whoever uses the client uses them too.
@_exported import MessageContracts
