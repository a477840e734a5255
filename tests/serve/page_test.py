#!/usr/bin/env python3
"""Drives `ldm serve`'s web page in headless Chromium: types a prompt, sets a
small size, clicks Generate, waits for the image and prints its size as JSON;
saves a screenshot.   page_test.py URL SCREENSHOT.png"""
import json
import sys

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

url, shot = sys.argv[1], sys.argv[2]
opts = Options()
for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,800"):
    opts.add_argument(a)
opts.binary_location = "/usr/bin/chromium"
drv = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
try:
    drv.get(url)
    WebDriverWait(drv, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#sampler option")) > 0)
    for field, value in (("prompt", "a red cube on a table"), ("width", "64"), ("height", "64"), ("steps", "6")):
        el = drv.find_element(By.ID, field)
        el.clear()
        el.send_keys(value)
    drv.find_element(By.ID, "generate").click()
    WebDriverWait(drv, 120).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#images img.result"))
    img = drv.find_element(By.CSS_SELECTOR, "#images img.result")
    WebDriverWait(drv, 20).until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img))
    size = drv.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img)
    info = drv.find_element(By.ID, "info").text
    drv.save_screenshot(shot)
    print(json.dumps({"width": size[0], "height": size[1], "info": info, "error": drv.find_element(By.ID, "error").text}))
finally:
    drv.quit()
