from engine.chain.context cimport Hooks


cdef class HeaderEdit(Hooks):
    cdef readonly tuple drop          # lowercase names
    cdef readonly tuple rename_from   # lowercase names ...
    cdef readonly tuple rename_to     # ... and what each becomes
    cdef readonly list append         # (name, value) pairs
    cdef readonly bytes append_lines  # ... as field lines

    cpdef list apply(self, list headers)
