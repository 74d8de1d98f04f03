# HTTP/1.1 helpers the codec and the upstream client both call at the C level
# (engine/wire/h1.pyx).

cdef bytes chunk(bytes data)
cdef tuple tokens(list values)
cdef bint only_keep_alive(list values) except -1
cdef list drop_named(list headers, tuple named, bint flat)
