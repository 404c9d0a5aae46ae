"""The runnable examples in the docstrings run and print what they say."""

import doctest

import pytest

import smoothprune.export
import smoothprune.inference
import smoothprune.nn.loss
import smoothprune.nn.router
import smoothprune.ops.hard_topk
import smoothprune.ops.loss
import smoothprune.ops.soft_topk
import smoothprune.pruning
import smoothprune.schedules

MODULES = [smoothprune.export, smoothprune.inference, smoothprune.nn.loss, smoothprune.nn.router, smoothprune.ops.hard_topk, smoothprune.ops.loss,
           smoothprune.ops.soft_topk, smoothprune.pruning, smoothprune.schedules]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
